# Shared by the bench scripts (sourced): the server under test is $SERVER_PID.

# The server's resident memory in MiB.
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status"; }

# Samples the server's RSS until process PID exits, reaps it, and prints the peak MiB.
peak_rss_while() {
  local peak=0 sample
  while kill -0 "$1" 2>/dev/null; do
    sample=$(rss_mib)
    [ "${sample:-0}" -gt "$peak" ] && peak=$sample
    sleep 0.25
  done
  wait "$1" || true
  echo "$peak"
}

# The server's CPU time so far (user + system), in seconds.
server_cpu_seconds() {
  awk -v ticks="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / ticks }' "/proc/$SERVER_PID/stat"
}
