#!/usr/bin/env bash
# Installs what is missing, builds (Release) and runs the all-in-one node on
# the demo city config, in the foreground. Ctrl-C stops it cleanly.
#   CITYOS_DEMO_LISTEN=127.0.0.1:7443  address to listen on
#   CITYOS_DEMO_DATA=build-release/demo-data  data dir (kept across runs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/common.sh

./scripts/deps.sh
build=$root/build-release
CITYOS_BUILD_TESTS=OFF cityos_build "$build" Release cityosd cityosctl

listen=${CITYOS_DEMO_LISTEN:-127.0.0.1:7443}
data=${CITYOS_DEMO_DATA:-$build/demo-data}
ctl=$build/services/cityosctl/cityosctl
cat <<MSG

cityos demo node
  config:   config/demo-city.yaml
  data dir: $data   (dev PKI in $data/pki on first start)
  listen:   $listen   (gRPC with mutual TLS; health and reflection on)
  metrics:  http://127.0.0.1:9464/metrics

On start the node writes the cityosctl context "demo-city" (admin certificate) to
${CITYOS_CONFIG:-$HOME/.config/cityos/config.yaml}. Try, in another terminal:
  $ctl services list
  $ctl services health
  $ctl streams list
  $ctl topics tail 'carbon.>'
  $ctl policy list
  $ctl explain --action read --domain health --type cityos.health.v1.BedAvailability \\
      --classification public --purpose medical_care
  $ctl exchange query --type cityos.health.v1.BedAvailability --purpose medical_care
      # (no entities until a hospital system publishes bed availability: the demo
      #  city simulates carbon only; the query still goes through policy and audit)
  $ctl audit verify
  # the carbon account, fed by the demo-city simulator (docs/carbon.md):
  $ctl carbon regions CN-ZJ-QZ --granularity day --from \$(date -d '-2 day' +%F) --to \$(date -d '+1 day' +%F) --sub
  $ctl carbon ranking --subject enterprises --from \$(date +%F) --to \$(date -d '+1 day' +%F)
  $ctl carbon alarms          # the cement plant's daily plan is tight
  $ctl carbon watch           # alarm changes as they happen
  $ctl carbon grades --at \$(date -d '-1 month' +%Y-%m-15)
  $ctl carbon grade js-cement --at \$(date -d '-1 month' +%Y-%m-15)
  $ctl carbon report js-cement --month \$(date -d '-1 month' +%Y-%m) --format csv
  $ctl carbon quarantine
  $ctl carbon accounts --kind individual
  curl -s http://127.0.0.1:9464/metrics | grep cityos_
Stop with Ctrl-C (the node drains and exits 0).

MSG
exec "$build/services/cityosd/cityosd" --config "$root/config/demo-city.yaml" \
  --data-dir "$data" --listen "$listen"
