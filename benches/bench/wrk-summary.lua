-- Loaded by benches/bench (wrk -s): when the run ends, print its totals as
-- one JSON line, with latency percentiles read from wrk's own histogram.
done = function(summary, latency, requests)
  local e = summary.errors
  local failed = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    '{"wrk": 1, "requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "errors": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), failed))
end
