//! Helpers shared by the disk module's unit tests.

use super::{GptAttributes, Guid, PartitionRequest, PartitionSize, PartitionTable};

/// A partition GUID made of one repeated byte.
pub(crate) fn guid(n: u8) -> Guid {
    Guid::v4_from_bytes([n; 16])
}

/// A partition request with GUID `guid(n)` and no attributes.
pub(crate) fn req(name: &str, type_guid: Guid, n: u8, size: PartitionSize) -> PartitionRequest {
    PartitionRequest { name: name.to_owned(), type_guid, guid: guid(n), attributes: GptAttributes::NONE, size }
}

/// A GPT with a fixed disk GUID.
pub(crate) const GPT: PartitionTable =
    PartitionTable::Gpt { disk_guid: Guid::from_u128(0x1234_5678_9ABC_4DEF_8123_4567_89AB_CDEF) };
