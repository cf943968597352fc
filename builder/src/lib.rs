//! kiln: NixOS image builder.
