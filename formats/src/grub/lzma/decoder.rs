//! A decoder for raw LZMA streams with GRUB's `lc`, `lp` and `pb` and a known decoded length, as GRUB's
//! `lzma_decompress.img` reads them: it stops after that many bytes, and an end marker may end the stream
//! there or before.

use super::rc::{PROB_HALF, RangeDecoder, Truncated};
use super::{LC, PB};

/// Why a stream does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The stream ended before the decoded length was reached.
    #[error("the stream ends after {decoded} of {len} bytes")]
    Truncated { decoded: usize, len: usize },
    /// A match reaches before the start of the output or past its end.
    #[error("a match at byte {at} of {len} reaches outside the output")]
    BadMatch { at: usize, len: usize },
    /// An end marker before the decoded length.
    #[error("an end marker after {decoded} of {len} bytes")]
    EarlyEnd { decoded: usize, len: usize },
}

const STATES: usize = 12;
const POS_STATES: usize = 1 << PB;

struct LenDecoder {
    choice: u16,
    choice2: u16,
    low: [u16; POS_STATES << 3],
    mid: [u16; POS_STATES << 3],
    high: [u16; 256],
}

impl LenDecoder {
    fn new() -> Self {
        Self {
            choice: PROB_HALF,
            choice2: PROB_HALF,
            low: [PROB_HALF; POS_STATES << 3],
            mid: [PROB_HALF; POS_STATES << 3],
            high: [PROB_HALF; 256],
        }
    }

    fn decode(&mut self, rc: &mut RangeDecoder<'_>, ps: usize) -> Result<usize, Truncated> {
        let s = if rc.bit(&mut self.choice)? == 0 {
            rc.tree(&mut self.low[ps << 3..], 3)?
        } else if rc.bit(&mut self.choice2)? == 0 {
            8 + rc.tree(&mut self.mid[ps << 3..], 3)?
        } else {
            16 + rc.tree(&mut self.high, 8)?
        };
        Ok(s as usize + 2)
    }
}

/// Decodes `len` bytes from `stream`.
pub fn decode(stream: &[u8], len: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(len);
    let truncated = |out: &Vec<u8>| DecodeError::Truncated { decoded: out.len(), len };
    if len == 0 {
        return Ok(out);
    }
    let mut rc = RangeDecoder::new(stream).map_err(|_| truncated(&out))?;
    match decode_into(&mut rc, &mut out, len) {
        Ok(()) => Ok(out),
        Err(Stop::Truncated) => Err(truncated(&out)),
        Err(Stop::BadMatch) => Err(DecodeError::BadMatch { at: out.len(), len }),
        Err(Stop::EndMarker) => Err(DecodeError::EarlyEnd { decoded: out.len(), len }),
    }
}

enum Stop {
    Truncated,
    BadMatch,
    EndMarker,
}

impl From<Truncated> for Stop {
    fn from(_: Truncated) -> Self {
        Stop::Truncated
    }
}

fn decode_into(rc: &mut RangeDecoder<'_>, out: &mut Vec<u8>, len: usize) -> Result<(), Stop> {
    let mut is_match = [[PROB_HALF; POS_STATES]; STATES];
    let mut is_rep = [PROB_HALF; STATES];
    let mut is_rep_g0 = [PROB_HALF; STATES];
    let mut is_rep_g1 = [PROB_HALF; STATES];
    let mut is_rep_g2 = [PROB_HALF; STATES];
    let mut is_rep0_long = [[PROB_HALF; POS_STATES]; STATES];
    let mut literal = vec![PROB_HALF; 0x300 << LC];
    let mut dist_slot = [[PROB_HALF; 64]; 4];
    let mut dist_special = [PROB_HALF; 1 + 128 - 14];
    let mut align = [PROB_HALF; 16];
    let mut match_len = LenDecoder::new();
    let mut rep_len = LenDecoder::new();
    let mut state = 0usize;
    let mut reps = [0usize; 4];

    while out.len() < len {
        let ps = out.len() & (POS_STATES - 1);
        if rc.bit(&mut is_match[state][ps])? == 0 {
            let prev = out.last().copied().unwrap_or(0);
            let base = 0x300 * (usize::from(prev) >> (8 - LC));
            let probs = &mut literal[base..base + 0x300];
            let mut s = 1usize;
            if state >= 7 {
                let at = out.len().checked_sub(reps[0] + 1).ok_or(Stop::BadMatch)?;
                let mut m = usize::from(out[at]);
                let mut offs = 0x100usize;
                while s < 0x100 {
                    m <<= 1;
                    let mb = m & offs;
                    let b = rc.bit(&mut probs[offs + mb + s])? as usize;
                    s = (s << 1) | b;
                    offs &= if b == 1 { mb } else { !mb };
                }
            } else {
                while s < 0x100 {
                    s = (s << 1) | rc.bit(&mut probs[s])? as usize;
                }
            }
            out.push(s as u8);
            state = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 4, 5][state];
            continue;
        }
        let n;
        if rc.bit(&mut is_rep[state])? == 1 {
            if rc.bit(&mut is_rep_g0[state])? == 0 {
                if rc.bit(&mut is_rep0_long[state][ps])? == 0 {
                    state = if state < 7 { 9 } else { 11 };
                    let at = out.len().checked_sub(reps[0] + 1).ok_or(Stop::BadMatch)?;
                    out.push(out[at]);
                    continue;
                }
            } else {
                let dist;
                if rc.bit(&mut is_rep_g1[state])? == 0 {
                    dist = reps[1];
                } else {
                    if rc.bit(&mut is_rep_g2[state])? == 0 {
                        dist = reps[2];
                    } else {
                        dist = reps[3];
                        reps[3] = reps[2];
                    }
                    reps[2] = reps[1];
                }
                reps[1] = reps[0];
                reps[0] = dist;
            }
            n = rep_len.decode(rc, ps)?;
            state = if state < 7 { 8 } else { 11 };
        } else {
            reps = [0, reps[0], reps[1], reps[2]];
            n = match_len.decode(rc, ps)?;
            state = if state < 7 { 7 } else { 10 };
            let slot = rc.tree(&mut dist_slot[(n - 2).min(3)], 6)?;
            let dist = if slot < 4 {
                slot
            } else {
                let bits = (slot >> 1) - 1;
                let base = (2 | (slot & 1)) << bits;
                if slot < 14 {
                    base + rc.reverse_tree(&mut dist_special, (base - slot) as usize, bits)?
                } else {
                    base + (rc.direct(bits - 4)? << 4) + rc.reverse_tree(&mut align, 0, 4)?
                }
            };
            if dist == u32::MAX {
                return Err(Stop::EndMarker);
            }
            reps[0] = dist as usize;
        }
        let from = out.len().checked_sub(reps[0] + 1).ok_or(Stop::BadMatch)?;
        if out.len() + n > len {
            return Err(Stop::BadMatch);
        }
        for i in 0..n {
            out.push(out[from + i]);
        }
    }
    Ok(())
}
