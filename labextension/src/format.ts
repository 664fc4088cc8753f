/**
 * Pure helpers for the dialogs and the sidebar: prices, cron checks, progress, request bodies,
 * API snippets and the replica sparkline. No JupyterLab, no DOM.
 */

import { N_, type TFunc } from './i18n';
import type {
  ITemplate,
  IDeployment,
  IImage,
  IJobProgress,
  IProfile,
  IReplicaCount,
  ISubmitBody
} from './types';

/** A price as the catalogue shows it: two decimals, no currency. */
export function formatPrice(price: number | null | undefined): string {
  return Number(price ?? 0).toFixed(2);
}

/** The estimated-cost line of the submit dialog. */
export function costEstimate(
  profile: IProfile | undefined,
  t: TFunc,
  scheduled = false
): string {
  if (!profile) {
    return t('Estimated cost: choose a profile to see its price.');
  }
  const price = Number(profile.price_per_hour ?? 0);
  if (price <= 0) {
    return t('Estimated cost: free on {profile}.', { profile: profile.name });
  }
  return t(scheduled ? N_('Estimated cost: {price} / h on {profile} for each scheduled run, billed only while it runs (30 min ≈ {half}).') : N_('Estimated cost: {price} / h on {profile}, billed only while the job runs (30 min ≈ {half}).'), {
    price: formatPrice(price),
    half: formatPrice(price / 2),
    profile: profile.name
  });
}

/** A short description of a profile for its picker: resources and price. */
export function profileLabel(profile: IProfile, t: TFunc): string {
  const parts = [profile.name];
  const facts: string[] = [];
  if (profile.cpu !== undefined) {
    facts.push(`${profile.cpu} CPU`);
  }
  if (profile.memory) {
    facts.push(profile.memory);
  }
  if (profile.gpu) {
    facts.push(`${profile.gpu} GPU${profile.gpu_type ? ` ${profile.gpu_type}` : ''}`);
  }
  facts.push(t('{price} / h', { price: formatPrice(profile.price_per_hour) }));
  parts.push(`(${facts.join(', ')})`);
  if (profile.available === false) {
    parts.push(
      '— ' + t('unavailable: {reason}', { reason: profile.unavailable_reason || '' }).trim()
    );
  }
  return parts.join(' ');
}

/** The label of an image in its picker. */
export function imageLabel(image: IImage, t: TFunc): string {
  let label = image.name === image.slug ? image.slug : `${image.name} (${image.slug})`;
  if (image.deprecated) {
    label += ' — ' + t('deprecated');
  }
  return label;
}

/**
 * Check a 5-field cron expression roughly (the server checks it exactly).
 * Returns an error message, or null when it looks right or is empty.
 */
export function cronError(cron: string, t: TFunc): string | null {
  const text = cron.trim();
  if (!text) {
    return null;
  }
  const fields = text.split(/\s+/);
  const field = /^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?|\*\/\d+|[0-9A-Za-z]+(-[0-9A-Za-z]+)?\/\d+)(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?(\/\d+)?|\*\/\d+))*$/;
  if (fields.length !== 5 || !fields.every(f => field.test(f))) {
    return t('"{cron}" is not a cron expression: use 5 fields (minute hour day month weekday), e.g. 0 3 * * *.', { cron: text });
  }
  return null;
}

/** "cell k/n" for a job's progress, or '' when the notebook has not started. */
export function progressText(progress: IJobProgress | undefined, t: TFunc): string {
  if (!progress || !progress.cells_total) {
    return '';
  }
  const k = progress.current_cell ?? progress.cells_done ?? 0;
  return t('cell {k}/{n}', { k, n: progress.cells_total });
}

/** The fraction of cells done, 0..1. */
export function progressFraction(progress: IJobProgress | undefined): number {
  if (!progress || !progress.cells_total) {
    return 0;
  }
  return Math.max(0, Math.min(1, (progress.cells_done ?? 0) / progress.cells_total));
}

/** "1 h 2 min", "3 min 4 s", "5 s". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '';
  }
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${s % 60} s`;
  }
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A metric value shown compactly. */
export function formatMetric(value: number): string {
  if (!Number.isFinite(value)) {
    return String(value);
  }
  if (Number.isInteger(value)) {
    return String(value);
  }
  return Math.abs(value) >= 1000 || Math.abs(value) < 0.001
    ? value.toPrecision(4)
    : String(Number(value.toFixed(4)));
}

/** A job name from a notebook path: the file name without `.ipynb`. */
export function jobNameFromPath(path: string): string {
  const base = path.split('/').pop() || path;
  return base.replace(/\.ipynb$/i, '');
}

/** A DNS-style deployment name (lowercase letters, digits, '-', ≤ 40) from a model name. */
export function deploymentNameFrom(model: string): string {
  const name = model
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40)
    .replace(/-+$/g, '');
  return name || 'model';
}

/** Whether a deployment name is DNS-style, as the control plane wants it. */
export function isDeploymentName(name: string): boolean {
  return /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/.test(name);
}

/** A whole number from `min` to `max`, or null. */
export function intIn(value: string, min: number, max: number): number | null {
  const n = Number(value);
  return Number.isInteger(n) && n >= min && n <= max ? n : null;
}

/** What the replica fields of the deploy and scale dialogs hold, as typed. */
export interface IReplicaInput {
  min: string;
  max: string;
  target: string;
}

export interface IReplicaSettings {
  minReplicas: number;
  maxReplicas: number;
  scaleTarget: number;
}

/** The replica fields checked: replicas 1..16 with min ≤ max, target in (0, 1000]; or the error. */
export function parseReplicas(input: IReplicaInput, t: TFunc): IReplicaSettings | string {
  const lo = intIn(input.min, 1, 16);
  const hi = intIn(input.max, 1, 16);
  const tgt = Number(input.target);
  if (lo === null || hi === null || lo > hi) {
    return t('Replicas must be whole numbers from 1 to 16, with min ≤ max.');
  }
  if (!Number.isFinite(tgt) || tgt <= 0 || tgt > 1000) {
    return t('Target concurrency must be a number above 0 and at most 1000.');
  }
  return { minReplicas: lo, maxReplicas: hi, scaleTarget: tgt };
}

/** A copy of `set` with `key` added, or removed when it was there. */
export function toggled<T>(set: ReadonlySet<T>, key: T): Set<T> {
  const next = new Set(set);
  if (next.has(key)) {
    next.delete(key);
  } else {
    next.add(key);
  }
  return next;
}

export interface ISubmitForm {
  path: string;
  parameters: Record<string, unknown>;
  name: string;
  image: string;
  imageVersion: string;
  profile: string;
  priority: string | number;
  schedule: string;
}

/**
 * The body of `POST fermi/api/jobs` (or `schedules` when `cron` is set) from the form.
 * The control plane's CreateJob has no image version field: send it only when asked.
 */
export function buildSubmitBody(
  form: ISubmitForm,
  options: { includeImageVersion?: boolean } = {}
): ISubmitBody {
  const body: ISubmitBody = {
    path: form.path,
    parameters: form.parameters,
    priority: clampPriority(form.priority)
  };
  if (form.image) {
    body.image = form.image;
  }
  if (options.includeImageVersion && form.imageVersion) {
    body.image_version = form.imageVersion;
  }
  if (form.profile) {
    body.profile = form.profile;
  }
  if (form.name.trim()) {
    body.name = form.name.trim();
  }
  if (form.schedule.trim()) {
    body.cron = form.schedule.trim().split(/\s+/).join(' ');
  }
  return body;
}

/** Priority as an integer in -100..100 (0 when not a number). */
export function clampPriority(value: string | number): number {
  const n = Math.round(Number(value));
  if (!Number.isFinite(n)) {
    return 0;
  }
  return Math.max(-100, Math.min(100, n));
}

/** The example inference request for a deployment (Open Inference Protocol V2). */
export function inferUrl(deployment: Pick<IDeployment, 'url' | 'model'>): string {
  return `${deployment.url.replace(/\/+$/, '')}/v2/models/${deployment.model}/infer`;
}

const EXAMPLE_BODY =
  '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}';

/** A curl command calling the deployment. */
export function curlSnippet(deployment: Pick<IDeployment, 'url' | 'model'>): string {
  return [
    `curl -X POST ${inferUrl(deployment)} \\`,
    '  -H "Authorization: Bearer $FERMI_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d '${EXAMPLE_BODY}'`
  ].join('\n');
}

/** A Python snippet calling the deployment with requests. */
export function pythonSnippet(deployment: Pick<IDeployment, 'url' | 'model'>): string {
  return [
    'import os',
    'import requests',
    '',
    'response = requests.post(',
    `    "${inferUrl(deployment)}",`,
    '    headers={"Authorization": f"Bearer {os.environ[\'FERMI_API_KEY\']}"},',
    `    json=${EXAMPLE_BODY},`,
    '    timeout=30,',
    ')',
    'response.raise_for_status()',
    'print(response.json()["outputs"])'
  ].join('\n');
}

/**
 * Points of an SVG polyline for the replica count over time (a step line), scaled into
 * `width` × `height`. Empty when there is no history.
 */
export function sparklinePoints(
  history: IReplicaCount[] | null | undefined,
  width: number,
  height: number,
  now: number = Date.now()
): string {
  if (!history || history.length === 0) {
    return '';
  }
  const samples = history
    .map(h => ({ at: Date.parse(h.at), replicas: h.replicas }))
    .filter(h => Number.isFinite(h.at))
    .sort((a, b) => a.at - b.at);
  if (samples.length === 0) {
    return '';
  }
  const start = samples[0].at;
  const end = Math.max(now, samples[samples.length - 1].at);
  const span = Math.max(1, end - start);
  const top = Math.max(1, ...samples.map(s => s.replicas));
  const x = (at: number) => ((at - start) / span) * width;
  const y = (r: number) => height - 1 - (r / top) * (height - 2);
  const points: string[] = [];
  samples.forEach((s, i) => {
    if (i > 0) {
      points.push(`${x(s.at).toFixed(1)},${y(samples[i - 1].replicas).toFixed(1)}`);
    }
    points.push(`${x(s.at).toFixed(1)},${y(s.replicas).toFixed(1)}`);
  });
  points.push(`${width.toFixed(1)},${y(samples[samples.length - 1].replicas).toFixed(1)}`);
  return points.join(' ');
}

/** The template's title and description in the UI language (English when missing). */
export function describeTemplate(template: ITemplate, lang: 'en' | 'zh'): { title: string; text: string } {
  const title = template.title?.[lang] || template.title?.en || template.name;
  const text = template.description?.[lang] || template.description?.en || '';
  return { title, text };
}
