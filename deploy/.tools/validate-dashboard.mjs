// Validates a Grafana dashboard JSON against the JSON schema generated from @grafana/schema's
// TypeScript types (see grafana-types.ts and deploy/check.sh, which generates the schema):
//   node validate-dashboard.mjs SCHEMA.json DASHBOARD.json   the verdict; the errors on stderr
//   node validate-dashboard.mjs SCHEMA.json --each FILE...   one line per file on stdout:
//                                                           valid|invalid <TAB> FILE <TAB> detail
// Exit 0: every file valid; 1: some file invalid; 2: could not check (usage, unreadable files,
// a schema that is not the generated one).
//
// What is checked:
//  - the dashboard against Grafana's `Dashboard` type (raw/dashboard/x), closed wherever the type
//    is: unknown or mistyped fields of the dashboard, its panels (Panel | RowPanel), gridPos,
//    templating variables, annotations, links, fieldConfig (defaults, overrides, mappings,
//    thresholds) are errors, and the type's required fields must be present;
//  - each panel's `options` and `fieldConfig.defaults.custom` against its plugin's types
//    (timeseries: Options, FieldConfig; stat: Options), closed too, but without their
//    `required` lists: Grafana fills a panel's missing options from the plugin's defaults when
//    it loads the panel, so the types' required fields are what a loaded panel has, not what a
//    saved one must spell out;
//  - fieldConfig override properties: `custom.<name>` against the plugin's FieldConfig, any
//    other id against the dashboard's FieldConfig.
// Not checked: `targets` (Record<string, unknown> in Grafana's type: the Prometheus query
// fields are the datasource plugin's, which @grafana/schema does not publish; the PromQL is
// run against a real Prometheus by tests/it/prometheus.rs), options of other panel types, and
// semantics (unique panel ids, overlapping gridPos, that `${DS_PROMETHEUS}` names a variable).
import { readFileSync } from 'node:fs';
import Ajv from 'ajv';

const IMPORT_ONLY = ['__inputs', '__requires', '__elements'];

function fail(msg) {
  console.error(msg);
  process.exit(2);
}

const args = process.argv.slice(2);
const schemaPath = args[0];
const each = args[1] === '--each';
const files = each ? args.slice(2) : args.slice(1, 2);
if (!schemaPath || !files.length || (!each && args.length !== 2)) {
  fail('usage: node validate-dashboard.mjs SCHEMA.json DASHBOARD.json | SCHEMA.json --each FILE...');
}
let schema;
try {
  schema = JSON.parse(readFileSync(schemaPath, 'utf8'));
} catch (e) {
  fail(`cannot read ${schemaPath}: ${e.message}`);
}
const parts = schema?.definitions?.Checked?.properties;
if (!parts?.dashboard || !parts.timeseriesOptions || !parts.timeseriesFieldConfig || !parts.statOptions) {
  fail(`${schemaPath}: not the schema generated from grafana-types.ts (no definitions.Checked)`);
}
// A type the generator could not resolve would come out as `{}` (anything goes): refuse that.
for (const [name, key] of [['dashboard', 'panels'], ['timeseriesOptions', 'legend'], ['timeseriesFieldConfig', 'axisPlacement'], ['statOptions', 'colorMode']]) {
  if (parts[name].additionalProperties !== false || !parts[name].properties?.[key]) {
    fail(`${schemaPath}: ${name} is not the closed Grafana type it should be (no '${key}')`);
  }
}

/** A copy of `s` without `required` anywhere. */
function optional(s) {
  if (Array.isArray(s)) return s.map(optional);
  if (s && typeof s === 'object') {
    return Object.fromEntries(
      Object.entries(s)
        .filter(([k]) => k !== 'required')
        .map(([k, v]) => [k, k === 'properties' ? Object.fromEntries(Object.entries(v).map(([p, ps]) => [p, optional(ps)])) : optional(v)]),
    );
  }
  return s;
}

const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
const compile = (s) => ajv.compile({ $schema: schema.$schema, ...s });
const checkDashboard = compile(parts.dashboard);
const plugin = {
  timeseries: { options: compile(optional(parts.timeseriesOptions)), custom: optional(parts.timeseriesFieldConfig) },
  stat: { options: compile(optional(parts.statOptions)), custom: null },
};
const fieldConfigProps = parts.dashboard.definitions?.FieldConfig?.properties ?? findFieldConfig(parts.dashboard);

/** The properties of the dashboard FieldConfig type (inlined under Panel.fieldConfig.defaults). */
function findFieldConfig(d) {
  const panel = d.properties.panels.items.anyOf.find((p) => p.properties?.fieldConfig);
  return panel.properties.fieldConfig.properties.defaults.properties;
}

// Panels are `Panel | RowPanel` (anyOf): a panel that fails gets the errors of both branches.
// The verdict is the whole schema's; the messages of a failing panel are those of the branch
// its `type` selects, which are the ones that say what is wrong.
const branches = parts.dashboard.properties.panels.items.anyOf;
const rowBranch = branches.find((b) => b.properties?.type?.const === 'row');
const panelBranch = branches.find((b) => b !== rowBranch);
if (!rowBranch || !panelBranch) fail('the schema has no Panel | RowPanel union under panels');
const checkRow = compile(rowBranch);
const checkPanel = compile(panelBranch);

/** The schema errors of one dashboard (none: valid) and a summary. */
function check(dashboard) {
  const errors = [];
  const report = (where, validate) => {
    for (const e of validate.errors ?? []) {
      const extra = e.params?.additionalProperty ? ` '${e.params.additionalProperty}'` : e.params?.allowedValues ? ` ${JSON.stringify(e.params.allowedValues)}` : '';
      errors.push(`${where}${e.instancePath || ''}`.replace(/^$/, '/') + `: ${e.message}${extra}`);
    }
  };

  // Import-only keys: Grafana's import (Dashboards > Import, or the API's import endpoint) reads
  // and removes __inputs/__requires/__elements before the dashboard is stored; the `Dashboard`
  // type has no such fields, so they are set aside here and only here (nothing else is removed).
  const stored = { ...dashboard };
  for (const k of IMPORT_ONLY) delete stored[k];
  for (const k of IMPORT_ONLY) {
    if (k in dashboard && !Array.isArray(dashboard[k])) errors.push(`/${k}: must be an array (import-only key)`);
  }
  if (!checkDashboard(stored)) {
    const failedPanels = new Set();
    for (const e of checkDashboard.errors) {
      const m = /^\/panels\/(\d+)(\/|$)/.exec(e.instancePath);
      if (m) failedPanels.add(Number(m[1]));
    }
    report('', { errors: checkDashboard.errors.filter((e) => !/^\/panels\/\d+(\/|$)/.test(e.instancePath)) });
    for (const i of failedPanels) {
      const p = stored.panels[i];
      const v = p?.type === 'row' ? checkRow : checkPanel;
      if (v(p)) errors.push(`/panels/${i}: matches neither Panel nor RowPanel`);
      else report(`/panels/${i}`, v);
    }
    if (!errors.length) errors.push('invalid (no detail)');
  }

  const panels = [];
  for (const [i, p] of (stored.panels ?? []).entries()) {
    panels.push([`/panels/${i}`, p]);
    for (const [j, c] of (p?.panels ?? []).entries()) panels.push([`/panels/${i}/panels/${j}`, c]);
  }
  let checked = 0;
  const unchecked = new Set();
  for (const [where, p] of panels) {
    if (!p || typeof p !== 'object' || p.type === 'row') continue;
    const pl = plugin[p.type];
    if (!pl) {
      unchecked.add(p.type);
      continue;
    }
    checked++;
    if (p.options !== undefined && !pl.options(p.options)) report(`${where}/options`, pl.options);
    const custom = p.fieldConfig?.defaults?.custom;
    if (custom !== undefined) {
      if (!pl.custom) errors.push(`${where}/fieldConfig/defaults/custom: the ${p.type} plugin has no custom field config`);
      else {
        const v = compile(pl.custom);
        if (!v(custom)) report(`${where}/fieldConfig/defaults/custom`, v);
      }
    }
    for (const [o, ov] of (p.fieldConfig?.overrides ?? []).entries()) {
      for (const [k, prop] of (ov?.properties ?? []).entries()) {
        const at = `${where}/fieldConfig/overrides/${o}/properties/${k}`;
        const id = String(prop?.id ?? '');
        const [props, name] = id.startsWith('custom.') ? [pl.custom?.properties ?? {}, id.slice(7)] : [fieldConfigProps, id];
        if (!(name in props)) {
          errors.push(`${at}/id: '${id}' is not a field config property of the ${p.type} panel`);
          continue;
        }
        if ('value' in prop) {
          const v = compile(props[name]);
          if (!v(prop.value)) report(`${at}/value`, v);
        }
      }
    }
  }

  const skipped = unchecked.size ? `; options of ${[...unchecked].join(', ')} panels not checked` : '';
  return { errors, summary: `Dashboard type, ${panels.length} panels, plugin options of ${checked}${skipped}` };
}

let invalid = 0;
for (const file of files) {
  let dashboard;
  try {
    dashboard = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`cannot read ${file}: ${e.message}`);
  }
  const { errors, summary } = check(dashboard);
  if (errors.length) invalid++;
  if (each) {
    console.log([errors.length ? 'invalid' : 'valid', file, errors.length ? errors.join(' | ') : summary].join('\t'));
  } else if (errors.length) {
    console.error(`${file}: ${errors.length} schema error(s):`);
    for (const e of errors.slice(0, 20)) console.error(`  ${e}`);
  } else {
    console.log(`valid: ${summary}`);
  }
}
process.exit(invalid ? 1 : 0);
