// The Grafana types deploy/check.sh turns into one JSON schema (ts-json-schema-generator, type
// `Checked`, every type inlined) for validate-dashboard.mjs: the dashboard model
// (@grafana/schema raw/dashboard/x, the JSON a dashboard is saved and provisioned as) and the
// option types of the panel plugins the dashboard uses. Import paths are the package's exports.
import type { Dashboard } from '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';
import type {
  Options as TimeSeriesOptions,
  FieldConfig as TimeSeriesFieldConfig,
} from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Options as StatOptions } from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';

export interface Checked {
  dashboard: Dashboard;
  timeseriesOptions: TimeSeriesOptions;
  timeseriesFieldConfig: TimeSeriesFieldConfig;
  statOptions: StatOptions;
}
