//! placeholder until the reference boot tests land
