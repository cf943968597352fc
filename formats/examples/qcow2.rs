//! Converts a raw disk image into qcow2 with kiln's writer (reading only the raw file's data ranges).
//!
//! ```sh
//! cargo run --release -p kiln-formats --example qcow2 -- [--compress zstd|zlib|none] [--level N] \
//!     [--cluster-size BYTES] [--threads N] IN.raw OUT.qcow2
//! ```

use std::fs::File;
use std::process::ExitCode;
use std::time::Instant;

use kiln_formats::image::qcow2::{ClusterSize, Compression, Qcow2};
use kiln_formats::image::{Container, RawImage};

const USAGE: &str = "usage: qcow2 [--compress zstd|zlib|none] [--level N] [--cluster-size BYTES] [--threads N] \
                     IN.raw OUT.qcow2";

struct Args {
    compression: Compression,
    cluster_size: ClusterSize,
    threads: Option<usize>,
    input: String,
    output: String,
}

fn parse() -> Result<Args, String> {
    let mut codec = "zstd".to_owned();
    let mut level = None;
    let mut cluster_size = ClusterSize::DEFAULT;
    let mut threads = None;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--compress" => codec = value("--compress")?,
            "--level" => level = Some(value("--level")?.parse::<i64>().map_err(|e| format!("--level: {e}"))?),
            "--cluster-size" => {
                let bytes = value("--cluster-size")?.parse().map_err(|e| format!("--cluster-size: {e}"))?;
                cluster_size = ClusterSize::new(bytes).map_err(|e| e.to_string())?;
            }
            "--threads" => threads = Some(value("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}\n{USAGE}")),
            _ => paths.push(arg),
        }
    }
    let level_as = |what| level.map(|l| i32::try_from(l).map_err(|_| format!("{what} level {l} out of range")));
    let compression = match codec.as_str() {
        "none" => Compression::None,
        "zstd" => Compression::Zstd { level: level_as("zstd").transpose()?.unwrap_or(Compression::ZSTD_DEFAULT_LEVEL) },
        "zlib" => Compression::Zlib {
            level: level_as("zlib")
                .transpose()?
                .map_or(Ok(Compression::ZLIB_DEFAULT_LEVEL), |l| u32::try_from(l).map_err(|_| "bad zlib level"))?,
        },
        other => return Err(format!("unknown compression {other} (zstd, zlib or none)")),
    };
    let [input, output]: [String; 2] = paths.try_into().map_err(|_| USAGE.to_owned())?;
    Ok(Args { compression, cluster_size, threads, input, output })
}

fn run(args: &Args) -> Result<(), String> {
    let qcow2 = Qcow2::new(args.compression).map_err(|e| e.to_string())?.with_cluster_size(args.cluster_size);
    let input = File::open(&args.input).map_err(|e| format!("opening {}: {e}", args.input))?;
    let image = RawImage::from_file(&input).map_err(|e| format!("reading the data ranges of {}: {e}", args.input))?;
    let output = File::create(&args.output).map_err(|e| format!("creating {}: {e}", args.output))?;
    let start = Instant::now();
    let convert = || qcow2.convert(&image, &output, &());
    match args.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| format!("thread pool: {e}"))?
            .install(convert),
        None => convert(),
    }
    .map_err(|e| format!("converting {} to {}: {e}", args.input, args.output))?;
    eprintln!(
        "{} -> {} ({}, {}): {:.3} s",
        args.input,
        args.output,
        args.compression.name(),
        args.cluster_size,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcow2: {e}");
            ExitCode::FAILURE
        }
    }
}
