//! Compresses a raw image into `raw.zst` with kiln's writer: what `bench/zst.sh` times.
//!
//! ```sh
//! cargo run --release -p kiln-formats --example zst -- IMAGE OUT.raw.zst [LEVEL] [THREADS]
//! ```
//! LEVEL defaults to 3, THREADS to the number of CPUs. Prints the wall time and the sizes.

use std::fs::File;
use std::process::ExitCode;
use std::time::Instant;

use kiln_formats::image::zst::RawZst;
use kiln_formats::image::{Container, RawImage};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        eprintln!("usage: zst IMAGE OUT.raw.zst [LEVEL] [THREADS]");
        return ExitCode::from(2);
    };
    let level = args.get(2).map_or(Ok(RawZst::DEFAULT_LEVEL), |s| s.parse());
    let threads = args
        .get(3)
        .map_or_else(|| Ok(std::thread::available_parallelism().map_or(1, |n| n.get() as u32)), |s| s.parse());
    let (Ok(level), Ok(threads)) = (level, threads) else {
        eprintln!("zst: LEVEL and THREADS must be numbers");
        return ExitCode::from(2);
    };
    match run(input, output, RawZst::new(level, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zst: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(input: &str, output: &str, zst: RawZst) -> std::io::Result<()> {
    let start = Instant::now();
    let src = File::open(input)?;
    let image = RawImage::from_file(&src)?;
    let out = File::create(output)?;
    zst.convert(&image, &out, &())?;
    let secs = start.elapsed().as_secs_f64();
    let written = out.metadata()?.len();
    println!(
        "{secs:.3} s  level {}  {} threads  image {} bytes ({} allocated)  zst {written} bytes",
        zst.level,
        zst.threads,
        image.size(),
        image.allocated_bytes()
    );
    Ok(())
}
