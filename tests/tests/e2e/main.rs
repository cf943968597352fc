mod boot_reference;
