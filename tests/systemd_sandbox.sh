#!/bin/bash
# Boot a real systemd as PID 1 of fresh namespaces, on a throwaway root, to run a baked
# project's units the way a host would (tests/test_systemd_live.py).
#
#   systemd_sandbox.sh ROOT PROJECT VENV UNITS_DIR ENV_FILE NAME CGROUPS_FILE
#
# It first moves into a new child of its cgroup in every hierarchy, listed in CGROUPS_FILE:
# the cgroups this systemd creates stay below them, and go when the caller removes them.
# ROOT (an empty directory) becomes a tmpfs with the machine's /usr read-only, a copy of its
# /etc holding only the units under test and the service's user, the project read-only at
# /opt/NAME and VENV at /opt/NAME/.venv. Every unit that the machine's targets would pull
# in (udev, sysctl, binfmt, module loading, ...) is masked, and /sys and /proc/sys are
# read-only, so nothing reaches the machine but the services' own sockets: the network
# namespace is shared, so the API listens on the machine's loopback.
set -euo pipefail
if [ "${1:-}" != "--inside" ]; then
    group=fastapi-prod-systemd-$$
    mapfile -t own </proc/self/cgroup # read it whole: it changes as this process moves
    for line in "${own[@]}"; do
        IFS=: read -r _ controllers path <<<"$line"
        case $controllers in
            cpuset) continue ;; # a new cpuset has no CPUs until given some; systemd leaves it be
            "") base=/sys/fs/cgroup/unified && [ -d $base ] || base=/sys/fs/cgroup ;;
            name=*) base=/sys/fs/cgroup/${controllers#name=} ;;
            *) base=/sys/fs/cgroup/$controllers ;;
        esac
        [ -f "$base$path/cgroup.procs" ] || continue
        mkdir "$base$path/$group"
        echo "$base$path/$group" >>"$7"
        echo $$ >"$base$path/$group/cgroup.procs"
    done
    exec unshare --pid --fork --mount --propagation private --cgroup --uts --ipc "$0" --inside "$@"
fi
shift
root=$1 project=$2 venv=$3 units=$4 env_file=$5 name=$6

mount -t tmpfs tmpfs "$root"
mkdir -p "$root"/{usr,etc,var,run,tmp,proc,sys,dev} "$root/opt/$name" "$root/.old"
mount --rbind /usr "$root/usr" && mount -o remount,bind,ro "$root/usr"
for directory in bin lib lib64 sbin; do ln -s "usr/$directory" "$root/$directory"; done
cp -a /etc/. "$root/etc/"
rm -rf "$root"/etc/systemd/system/*
cp "$units"/*.service "$root/etc/systemd/system/"
for wanted in /usr/lib/systemd/system/*.wants/*; do
    case $(basename "$wanted") in
        systemd-journald*) ;;
        *) ln -sf /dev/null "$root/etc/systemd/system/$(basename "$wanted")" ;;
    esac
done
echo "$name:x:990:990::/opt/$name:/usr/sbin/nologin" >>"$root/etc/passwd"
echo "$name:x:990:" >>"$root/etc/group"
mkdir -p "$root/etc/$name" && cp "$env_file" "$root/etc/$name/$name.env"
: >"$root/etc/machine-id"
mount --bind "$project" "$root/opt/$name" && mount -o remount,bind,ro "$root/opt/$name"
mount --bind "$venv" "$root/opt/$name/.venv" && mount -o remount,bind,ro "$root/opt/$name/.venv"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys" && mount -o remount,bind,ro "$root/sys"
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys" && mount -o remount,bind,ro "$root/proc/sys"
for directory in run tmp var; do mount -t tmpfs tmpfs "$root/$directory"; done
mkdir -p "$root/var/log" "$root/var/lib" "$root/var/tmp"

# pivot_root rather than chroot: a chrooted process may not create the user namespace that
# PrivateUsers= asks for.
cd "$root"
pivot_root . .old
umount -l /.old
rmdir /.old
export container=fastapi-prod-test
exec /lib/systemd/systemd --system --unit=multi-user.target --log-target=journal
