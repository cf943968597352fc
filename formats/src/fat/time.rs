//! DOS dates and times, from a Unix time given by the caller (never the clock).

/// A directory entry's time stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DosTime {
    /// `(year − 1980) << 9 | month << 5 | day`.
    pub date: u16,
    /// `hour << 11 | minute << 5 | second / 2`.
    pub time: u16,
    /// Hundredths of a second past `time` (0 or 100: the odd second), for creation times.
    pub hundredths: u8,
}

/// 1980-01-01T00:00:00Z, the first DOS time.
const DOS_EPOCH: i64 = 315_532_800;
/// 2107-12-31T23:59:59Z, the last DOS time.
const DOS_END: i64 = 4_354_819_199;

/// Civil date (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl DosTime {
    /// The DOS time of `unix` seconds (UTC), clamped to 1980-01-01 ..= 2107-12-31T23:59:59.
    pub(crate) fn from_unix(unix: i64) -> Self {
        let t = unix.clamp(DOS_EPOCH, DOS_END);
        let (year, month, day) = civil(t.div_euclid(86_400));
        let secs = t.rem_euclid(86_400);
        let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
        Self {
            date: (((year - 1980) as u16) << 9) | ((month as u16) << 5) | day as u16,
            time: ((hour as u16) << 11) | ((minute as u16) << 5) | (second / 2) as u16,
            hundredths: ((second % 2) * 100) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_clamps() {
        struct Case {
            unix: i64,
            want: (u16, u32, u32, u32, u32, u32),
        }
        let cases = [
            Case { unix: 0, want: (1980, 1, 1, 0, 0, 0) },
            Case { unix: DOS_EPOCH, want: (1980, 1, 1, 0, 0, 0) },
            // 2000-02-29T12:34:57Z
            Case { unix: 951_827_697, want: (2000, 2, 29, 12, 34, 57) },
            // 2023-11-14T22:13:20Z
            Case { unix: 1_700_000_000, want: (2023, 11, 14, 22, 13, 20) },
            Case { unix: i64::MAX, want: (2107, 12, 31, 23, 59, 59) },
        ];
        for case in cases {
            let t = DosTime::from_unix(case.unix);
            let got = (
                (t.date >> 9) + 1980,
                u32::from((t.date >> 5) & 0xf),
                u32::from(t.date & 0x1f),
                u32::from(t.time >> 11),
                u32::from((t.time >> 5) & 0x3f),
                u32::from(t.time & 0x1f) * 2 + u32::from(t.hundredths) / 100,
            );
            assert_eq!(got, case.want, "{}", case.unix);
        }
    }
}
