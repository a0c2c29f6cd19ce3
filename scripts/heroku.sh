#!/usr/bin/env bash
# heroku.sh: build the Docker image and release it as the web process of the
# Heroku app named by APP_NAME. Needs docker and the heroku CLI, logged in
# (heroku login, or HEROKU_API_KEY set); the app must be on the container
# stack (heroku stack:set container --app APP_NAME).
#
# Heroku's disk does not keep data: the data folder is lost on every restart,
# deploy and daily dyno cycle. Use this for testing only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${APP_NAME:-} ]]; then
	echo "heroku.sh: set APP_NAME to the Heroku app to deploy to, e.g. APP_NAME=my-exdaas $0" >&2
	exit 2
fi

echo "!! WARNING: Heroku's disk does not keep data. exdaas' data folder is lost on"
echo "!! every restart and every deploy: use this app for testing only."

# Heroku's filesystem is ephemeral and its dynos may not run as the image's
# user, which owns /data: keep the data under /tmp unless the app says otherwise.
if [[ -z $(heroku config:get DETS_ROOT --app "$APP_NAME") ]]; then
	echo "== heroku config:set DETS_ROOT=/tmp/exdaas-data --app $APP_NAME"
	heroku config:set DETS_ROOT=/tmp/exdaas-data --app "$APP_NAME"
fi

echo "== heroku container:login"
heroku container:login

# `container:push web` builds the file named exactly `Dockerfile` in the current
# directory (--recursive would look for Dockerfile.web instead), with the
# Dockerfile's own folder as the build context unless --context-path says
# otherwise. So run it from docker/ with the repository root as the context.
echo "== heroku container:push web --app $APP_NAME (docker/Dockerfile, context: repository root)"
(cd docker && heroku container:push web --app "$APP_NAME" --context-path ..)

echo "== heroku container:release web --app $APP_NAME"
heroku container:release web --app "$APP_NAME"
echo "== Released: heroku open --app $APP_NAME"
