//! HTTP(S) sources and side files: one blocking GET each, streamed, with timeouts on connecting and on waiting
//! for the response. No `Range` requests: many servers (Python's `http.server`) ignore them.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A response body, streamed.
pub(super) type Body = Box<dyn Read + Send>;

/// The agent: no HTTP status taken as an error by ureq (they are worded here), bounded waits.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// GETs `url`: its body and its `Content-Length`, or `None` for 404 (absent).
///
/// # Errors
/// When the request fails or the status is neither success nor 404; the message names the URL and the status.
pub(super) fn get(url: &str) -> Result<Option<(Body, Option<u64>)>> {
    let resp = agent().get(url).call().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if status.as_u16() == 404 {
        return Ok(None);
    }
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    let len = resp.body().content_length();
    Ok(Some((Box::new(resp.into_body().into_reader()), len)))
}

/// GETs a small side file (at most `limit` bytes) whole, or `None` for 404.
///
/// # Errors
/// As [`get`], and when the body is larger than `limit` or breaks off.
pub(super) fn get_small(url: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some((body, _)) = get(url)? else { return Ok(None) };
    let mut bytes = Vec::new();
    body.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("GET {url}: reading the body"))?;
    if bytes.len() as u64 > limit {
        bail!("GET {url}: more than {limit} bytes, too large for what it should be");
    }
    Ok(Some(bytes))
}

/// Whether `source` names a URL rather than a path.
pub(super) fn is_url(source: &str) -> bool {
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}
