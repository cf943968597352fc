//! Runs one streaming output on a raw image and prints the wall time: for measuring, not a benchmark.
//!
//! ```sh
//! cargo run --release -p kiln-formats --example stream -- raw|raw.zst|gce|bmap|sha256 IMAGE OUT [THREADS [LEVEL]]
//! ```
//! THREADS (default: the number of CPUs) sizes the rayon pool and zstd's workers; LEVEL is the compression level
//! of raw.zst and gce (default: their defaults).

use std::fs::File;
use std::io;
use std::process::ExitCode;
use std::time::Instant;

use kiln_formats::image::checksum::sha256_file;
use kiln_formats::image::gce::Gce;
use kiln_formats::image::raw::Raw;
use kiln_formats::image::zst::RawZst;
use kiln_formats::image::{Container, RawImage, bmap};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [format, input, output, rest @ ..] = &args[..] else {
        eprintln!("usage: stream raw|raw.zst|gce|bmap|sha256 IMAGE OUT [THREADS [LEVEL]]");
        return ExitCode::from(2);
    };
    let threads = match rest.first().map(|s| s.parse::<usize>()) {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("stream: THREADS must be a positive number");
            return ExitCode::from(2);
        }
    };
    let Ok(level) = rest.get(1).map(|s| s.parse::<i32>()).transpose() else {
        eprintln!("stream: LEVEL must be a number");
        return ExitCode::from(2);
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
    let start = Instant::now();
    match pool.install(|| run(format, input, output, threads, level)) {
        Ok(what) => {
            println!("{format}: {:.3} s, {threads} threads: {what}", start.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stream: {format}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(format: &str, input: &str, output: &str, threads: usize, level: Option<i32>) -> io::Result<String> {
    let src = File::open(input)?;
    if format == "sha256" {
        return sha256_file(&src);
    }
    let image = RawImage::from_file(&src)?;
    if format == "bmap" {
        let xml = bmap::generate(&image, &())?;
        std::fs::write(output, &xml)?;
        return Ok(format!("{} bytes of XML", xml.len()));
    }
    let container: Box<dyn Container> = match format {
        "raw" => Box::new(Raw),
        "raw.zst" => Box::new(RawZst::new(level.unwrap_or(RawZst::DEFAULT_LEVEL), threads as u32)),
        "gce" => Box::new(Gce { level: level.map_or(Gce::DEFAULT_LEVEL, |l| l.max(0) as u32), ..Gce::default() }),
        _ => return Err(io::Error::other(format!("unknown format {format}"))),
    };
    let out = File::create(output)?;
    container.convert(&image, &out, &())?;
    Ok(format!("{} bytes", out.metadata()?.len()))
}
