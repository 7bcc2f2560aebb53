#!/bin/sh
# Run a command as on a fresh host: in a private mount namespace where
# tracefs, debugfs and bpffs are unmounted (whatever this machine has), so
# that only podsight's own code can provide them.  Unmounting only: mounting
# what the agent needs is the agent's job.  Root only (unshare --mount).
#   scripts/fresh-mounts.sh COMMAND [ARG...]
set -eu
[ "$#" -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
exec unshare --mount --propagation private sh -c '
pseudo() { awk "\$3==\"tracefs\" || \$3==\"debugfs\" || \$3==\"bpf\" {print \$2}" /proc/self/mounts; }
pseudo | sort -r | while read -r m; do umount -l "$m"; done
if [ -n "$(pseudo)" ]; then
  echo "fresh-mounts: could not unmount: $(pseudo | tr "\n" " ")" >&2; exit 97
fi
exec "$@"
' fresh-mounts "$@"
