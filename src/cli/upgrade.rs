//! `apisix-stream upgrade`: ask the running server for its pid through the
//! Control API, send it SIGUSR2 and wait until another pid serves.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::Value;

/// Upgrade the server whose Control API is at `control_url`; the new pid.
pub fn run(control_url: &str, timeout: Duration) -> anyhow::Result<u32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(upgrade(control_url, timeout))
}

async fn stats(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let res = http
        .get(format!("{url}/v1/stream/stats"))
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the Control API at {url}: {e}"))?;
    if !res.status().is_success() {
        bail!("{url}/v1/stream/stats answered {}", res.status());
    }
    Ok(res.json().await?)
}

fn pid_of(v: &Value) -> anyhow::Result<u32> {
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| anyhow!("the server does not report its pid (too old for upgrade?)"))
}

fn failures(v: &Value) -> u64 {
    v["upgrade"]["failures"].as_u64().unwrap_or(0)
}

async fn upgrade(url: &str, timeout: Duration) -> anyhow::Result<u32> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let before = stats(&http, url).await?;
    let old = pid_of(&before)?;
    let failed = failures(&before);
    let pid = rustix::process::Pid::from_raw(old as i32)
        .ok_or_else(|| anyhow!("the server reports pid {old}, which is not valid"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR2)
        .map_err(|e| anyhow!("cannot signal pid {old}: {e}"))?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // While the sockets change hands an answer may come from either.
        let Ok(now) = stats(&http, url).await else {
            continue;
        };
        match pid_of(&now)? {
            p if p != old => return Ok(p),
            _ if failures(&now) > failed => bail!(
                "pid {old} still serves: {}",
                now["upgrade"]["last_failure"]
                    .as_str()
                    .unwrap_or("the upgrade failed")
            ),
            _ => {}
        }
    }
    bail!("pid {old} still serves: no new process took over within {timeout:?}")
}
