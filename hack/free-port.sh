# shellcheck shell=bash
# Sourced by the hack/ scripts that start servers on fixed loopback ports: free_port picks them.
#
# The ports come from below the kernel's ephemeral range (ip_local_port_range), because a port in
# that range can be held at any moment by an outgoing connection's local end or by a ":0" listener
# (the test suites make thousands), and a connect test cannot see either: bind then fails with
# "address already in use".

# free_port NAME sets the variable NAME to a loopback TCP port below the ephemeral range that
# nobody answers on and no earlier call in this shell chose. (It assigns rather than prints: a
# call in $(...) would run in a subshell and forget what it chose.)
free_port_taken=" "
free_port() {
  local fp_low=32768 fp_high=60999 fp_first=10000 fp_last fp_port
  if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
    read -r fp_low fp_high </proc/sys/net/ipv4/ip_local_port_range
  fi
  fp_last=$((fp_low - 1))
  if [ "$fp_last" -lt $((fp_first + 1000)) ]; then
    # An unusually wide ephemeral range: use the ports above it instead.
    fp_first=$((fp_high + 1)) fp_last=65535
    if [ "$fp_first" -gt "$fp_last" ]; then
      fp_first=1024 # no port outside it at all: any unprivileged one
    fi
  fi
  while true; do
    fp_port=$((fp_first + (RANDOM * 32768 + RANDOM) % (fp_last - fp_first + 1)))
    case "$free_port_taken" in *" $fp_port "*) continue ;; esac
    if ! (: <"/dev/tcp/127.0.0.1/$fp_port") 2>/dev/null; then
      free_port_taken="$free_port_taken$fp_port "
      printf -v "$1" '%s' "$fp_port"
      return
    fi
  done
}
