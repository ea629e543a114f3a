"""apisix-stream's benchmark harness: apisix-stream side by side with
`direct`, nginx, HAProxy and dnsdist, with a report folder and charts."""
