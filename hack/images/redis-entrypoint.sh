#!/bin/sh
# The official redis image's docker-entrypoint.sh, for Debian's redis-server
# (hack/images/redis.Dockerfile): setpriv instead of gosu, and protected mode off by
# default as in the official build (a config file or a later --protected-mode decides).
set -e

# first arg is `-f` or `--some-option`, or `something.conf`
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

# started as root: hand /data to the redis user and run as it
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = 'redis-server' ]; then
	case "${2:-}" in
		'' | -*) shift; set -- redis-server --protected-mode no "$@" ;;
	esac
fi

# set an appropriate umask (if one isn't set already)
um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi

exec "$@"
