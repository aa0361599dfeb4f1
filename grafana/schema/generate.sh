#!/bin/sh
# Regenerate the JSON schemas the tests validate dashboards against, from Grafana's own TypeScript types
# (npm package @grafana/schema, pinned to the Grafana image's version) with ts-json-schema-generator.
# Needs node and npm; writes grafana/schema/*.schema.json. Usage: sh grafana/schema/generate.sh
set -eu
GRAFANA_SCHEMA_VERSION=11.6.7
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --silent "@grafana/schema@$GRAFANA_SCHEMA_VERSION" ts-json-schema-generator@2 typescript@5
raw=node_modules/@grafana/schema/dist/esm/raw
gen() {  # gen TYPES_FILE TYPE OUTPUT
    npx ts-json-schema-generator --no-type-check --path "$1" --type "$2" -o "$out/$3"
}
gen "$raw/dashboard/x/dashboard_types.gen.d.ts" Dashboard dashboard.schema.json
for panel in timeseries:TimeSeries stat:Stat bargauge:BarGauge table:Table; do
    dir=${panel%%:*}; name=${panel##*:}
    gen "$raw/composable/$dir/panelcfg/x/${name}PanelCfg_types.gen.d.ts" Options "panel-$dir-options.schema.json"
done
for panel in timeseries:TimeSeries table:Table; do
    dir=${panel%%:*}; name=${panel##*:}
    gen "$raw/composable/$dir/panelcfg/x/${name}PanelCfg_types.gen.d.ts" FieldConfig "panel-$dir-fieldconfig.schema.json"
done
echo "schemas from @grafana/schema@$GRAFANA_SCHEMA_VERSION written to $out"
