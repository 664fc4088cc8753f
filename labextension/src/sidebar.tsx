/** The Fermi sidebar: Jobs, Models and Deployments, each with its guide card. */

import { Dialog, Notification, ReactWidget, showDialog } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { api } from './api';
import { KeySnippet, showCanaryDialog, showDeployDialog, showScaleDialog, UsageSnippets } from './deploy';
import { CopyButton, SelectField } from './fields';
import {
  formatDuration,
  formatMetric,
  formatPrice,
  progressFraction,
  progressText,
  sparklinePoints,
  toggled
} from './format';
import { GuideCard } from './guide';
import { N_, type TFunc } from './i18n';
import { fermiIcon } from './icons';
import { FermiModel, SectionId } from './model';
import { errorMessage } from './request';
import {
  ACTIVE_JOB_STATUSES,
  IDeployment,
  IEnvironment,
  IJob,
  IModel,
  IModelSummary,
  IReplicaCount,
  ISchedule
} from './types';

export interface ISidebarContext {
  t: TFunc;
  model: FermiModel;
  commands: CommandRegistry;
}

const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

function useModel(model: FermiModel): void {
  const [, setTick] = React.useState(0);
  React.useEffect(() => model.subscribe(() => setTick(n => n + 1)), [model]);
}

// the statuses the API sends, as msgids of the catalogue (shown translated)
const STATUSES: Record<string, string> = {
  queued: N_('queued'),
  running: N_('running'),
  succeeded: N_('succeeded'),
  failed: N_('failed'),
  cancelled: N_('cancelled'),
  pending: N_('pending'),
  ready: N_('ready'),
  stopped: N_('stopped')
};

function statusLabel(t: TFunc, status: string): string {
  return status in STATUSES ? t(STATUSES[status]) : status;
}

function when(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

async function confirm(t: TFunc, title: string, body: string, accept: string): Promise<boolean> {
  const result = await showDialog({
    title,
    body,
    buttons: [Dialog.cancelButton({ label: t('Cancel') }), Dialog.warnButton({ label: accept })],
    defaultButton: 0
  });
  return result.button.accept;
}

/** Runs a row's action; a failure is notified with the message `key`. */
async function attempt(t: TFunc, key: string, action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (e) {
    Notification.error(t(key, { message: errorMessage(e) }), { autoClose: 8000 });
  }
}

/**
 * Runs `tick` now and again after the delay it resolves with (null: no more) until the component
 * goes or `deps` change; `live()` says whether what `tick` fetched is still wanted.
 */
function usePoll(tick: (live: () => boolean) => Promise<number | null>, deps: React.DependencyList): void {
  React.useEffect(() => {
    let stopped = false;
    let timer = 0;
    const live = () => !stopped;
    const run = async () => {
      const delay = await tick(live);
      if (!stopped && delay !== null) {
        timer = window.setTimeout(run, delay);
      }
    };
    void run();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, deps);
}

/** Scrolls the item of `root` whose `attribute` is `key` into view. */
function scrollToItem(root: HTMLElement | null, attribute: string, key: string): void {
  root?.querySelector(`[${attribute}="${CSS.escape(key)}"]`)?.scrollIntoView({ block: 'nearest' });
}

/** A section's list: its error above it, then a loading or an empty note, then the rows. */
function ItemList(props: {
  t: TFunc;
  items: unknown[] | null;
  error: string;
  empty: string;
  listRef: React.RefObject<HTMLDivElement>;
  children: React.ReactNode;
}): JSX.Element {
  const { t, items, error } = props;
  return (
    <>
      {error && <div className="fermi-error">{error}</div>}
      <div className="fermi-list" ref={props.listRef}>
        {items === null && !error && <div className="fermi-hint">{t('Loading…')}</div>}
        {items !== null && items.length === 0 && <div className="fermi-empty">{props.empty}</div>}
        {props.children}
      </div>
    </>
  );
}

function Section(props: {
  id: SectionId;
  title: string;
  t: TFunc;
  onRefresh: () => void;
  children: React.ReactNode;
}): JSX.Element {
  const [open, setOpen] = React.useState(true);
  return (
    <section className="fermi-section" data-fermi-section={props.id}>
      <header className="fermi-section-head">
        <button
          className="fermi-section-toggle"
          aria-expanded={open}
          onClick={() => setOpen(!open)}
        >
          <span className="fermi-caret">{open ? '▾' : '▸'}</span> {props.title}
        </button>
        <button
          className="jp-Button jp-mod-minimal fermi-refresh"
          data-fermi-action="refresh"
          title={props.t('Refresh')}
          onClick={props.onRefresh}
        >
          ⟳
        </button>
      </header>
      <div className="fermi-section-body" hidden={!open}>
        {props.children}
      </div>
    </section>
  );
}

/** Follows a job's log from offset 0, every poll interval, until it is complete. */
function LogView(props: { ctx: ISidebarContext; jobId: string }): JSX.Element {
  const { ctx, jobId } = props;
  const { t } = ctx;
  const [text, setText] = React.useState('');
  const [complete, setComplete] = React.useState(false);
  const [error, setError] = React.useState('');
  const ref = React.useRef<HTMLPreElement>(null);

  // A LogView follows one job: its JobRow is keyed by the job's id.
  const offset = React.useRef(0);
  usePoll(async live => {
    try {
      const logs = await api.logs(jobId, offset.current);
      if (!live()) {
        return null;
      }
      setError('');
      if (logs.text) {
        setText(old => {
          const next = old + logs.text;
          return next.length > 400000 ? next.slice(next.length - 400000) : next;
        });
      }
      offset.current = logs.next_offset ?? offset.current;
      if (logs.complete) {
        setComplete(true);
        return null;
      }
    } catch (e) {
      if (!live()) {
        return null;
      }
      setError(errorMessage(e));
    }
    return ctx.model.pollDelay(true);
  }, [jobId]);

  React.useEffect(() => {
    const node = ref.current;
    if (node) {
      node.scrollTop = node.scrollHeight;
    }
  }, [text]);

  return (
    <div className="fermi-log-box">
      <pre className="fermi-log" ref={ref}>
        {text}
      </pre>
      <div className="fermi-hint">
        {error
          ? t('Could not read the log: {message}', { message: error })
          : complete
            ? t('The job has ended: this is the whole log.')
            : text
              ? t('Following the log…')
              : t('Waiting for the log…')}
      </div>
    </div>
  );
}

/** A record's entries as chips in a `div` of class `className` (nothing when it is empty). */
function Chips<V>(props: {
  className: string;
  entries: Record<string, V> | undefined;
  chip: (key: string, value: V) => { className: string; text: string; metric?: string };
}): JSX.Element | null {
  const entries = Object.entries(props.entries ?? {});
  if (!entries.length) {
    return null;
  }
  return (
    <div className={props.className}>
      {entries.map(([k, v]) => {
        const chip = props.chip(k, v);
        return (
          <span key={k} className={chip.className} data-fermi-metric={chip.metric}>
            {chip.text}
          </span>
        );
      })}
    </div>
  );
}

function Metrics(props: { metrics: Record<string, number> | undefined }): JSX.Element | null {
  return (
    <Chips
      className="fermi-metrics"
      entries={props.metrics}
      chip={(k, v) => ({ className: 'fermi-chip', text: `${k} = ${formatMetric(v)}`, metric: k })}
    />
  );
}

function Params(props: { params: Record<string, unknown> | undefined }): JSX.Element | null {
  return (
    <Chips
      className="fermi-params"
      entries={props.params}
      chip={(k, v) => ({
        className: 'fermi-chip fermi-chip-param',
        text: `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`
      })}
    />
  );
}

/** A row's action button: `data-fermi-action` is its id; hidden when `show` is false. */
interface IAction {
  id: string;
  label: string;
  onClick: () => void;
  show?: boolean;
  disabled?: boolean;
  title?: string;
  pressed?: boolean;
  /** The classes after `jp-Button` (default `jp-mod-minimal`). */
  classes?: string;
}

/** A row's action buttons, from a table. */
function Actions(props: { actions: IAction[] }): JSX.Element {
  return (
    <div className="fermi-actions">
      {props.actions
        .filter(a => a.show !== false)
        .map(a => (
          <button
            key={a.id}
            className={`jp-Button ${a.classes ?? 'jp-mod-minimal'}`}
            data-fermi-action={a.id}
            aria-pressed={a.pressed}
            disabled={a.disabled}
            title={a.title}
            onClick={a.onClick}
          >
            {a.label}
          </button>
        ))}
    </div>
  );
}

function JobRow(props: {
  ctx: ISidebarContext;
  job: IJob;
  highlighted: boolean;
  logsOpen: boolean;
  onToggleLogs: () => void;
  onChanged: () => void;
}): JSX.Element {
  const { ctx, job, highlighted } = props;
  const { t, model } = ctx;
  const active = ACTIVE_JOB_STATUSES.includes(job.status);
  const progress = progressText(job.progress, t);
  const [busy, setBusy] = React.useState(false);

  const busyWhile = async (key: string, action: () => Promise<void>) => {
    setBusy(true);
    await attempt(t, key, action);
    setBusy(false);
  };

  const cancel = async () => {
    if (!(await confirm(t, t('Cancel the job?'), t('Job "{name}" stops; its output so far is kept.', { name: job.name }), t('Cancel job')))) {
      return;
    }
    await busyWhile(N_('Could not cancel the job: {message}'), async () => {
      await api.cancelJob(job.id);
      props.onChanged();
    });
  };

  const retry = () =>
    busyWhile(N_('Could not retry the job: {message}'), async () => {
      const next = await api.retryJob(job.id);
      Notification.success(t('Retrying as job "{name}" ({id}).', { name: next.name, id: next.id }), { autoClose: 5000 });
      model.revealItem('jobs', next.id);
    });

  const openOutput = () =>
    busyWhile(N_('Could not open the output notebook: {message}'), async () => {
      const { path } = await api.openOutput(job.id);
      await ctx.commands.execute('docmanager:open', { path });
    });

  return (
    <div
      className={'fermi-item fermi-job' + (highlighted ? ' fermi-mod-highlight' : '')}
      data-fermi-job={job.id}
      data-fermi-status={job.status}
    >
      <div className="fermi-item-head">
        <span className={`fermi-status fermi-status-${job.status}`}>{statusLabel(t, job.status)}</span>
        <span className="fermi-item-name" title={job.notebook_name}>
          {job.name}
        </span>
        <span className="fermi-id" title={t('Job id')}>
          {job.id}
        </span>
      </div>
      <div className="fermi-item-meta">
        {progress && <span className="fermi-progress-text">{progress}</span>}
        {job.status === 'queued' && job.queue_position !== null && job.queue_position !== undefined && (
          <span>{t('position {n} in the queue', { n: job.queue_position })}</span>
        )}
        {job.duration_seconds ? <span>{formatDuration(job.duration_seconds)}</span> : null}
        <span>{job.profile}</span>
        <span title={job.created_at}>{when(job.created_at)}</span>
        {job.attempt > 1 && <span>{t('attempt {n}', { n: job.attempt })}</span>}
      </div>
      {job.status === 'running' && job.progress?.cells_total ? (
        <div className="fermi-progress" title={progress}>
          <div style={{ width: `${Math.round(progressFraction(job.progress) * 100)}%` }} />
        </div>
      ) : null}
      {job.reason && <div className="fermi-reason">{job.reason}</div>}
      <Metrics metrics={job.metrics} />
      {job.models && job.models.length > 0 && (
        <div className="fermi-job-models">
          {t('Registered:')}{' '}
          {job.models.map(m => (
            <button
              key={`${m.name}:${m.version}`}
              className="fermi-link"
              onClick={() => model.revealItem('models', m.name)}
            >
              {m.name} v{m.version}
            </button>
          ))}
        </div>
      )}
      <Actions
        actions={[
          { id: 'cancel', label: t('Cancel'), show: active, disabled: busy, onClick: cancel },
          {
            id: 'retry',
            label: t('Retry'),
            show: job.status === 'failed' || job.status === 'cancelled',
            disabled: busy,
            onClick: retry
          },
          {
            id: 'logs',
            label: props.logsOpen ? t('Hide logs') : t('Logs'),
            classes: 'jp-mod-minimal' + (props.logsOpen ? ' fermi-mod-on' : ''),
            pressed: props.logsOpen,
            onClick: props.onToggleLogs
          },
          {
            id: 'output',
            label: t('Open output notebook'),
            show: job.status !== 'queued',
            disabled: busy,
            onClick: openOutput
          }
        ]}
      />
      {props.logsOpen && <LogView ctx={ctx} jobId={job.id} />}
    </div>
  );
}

function JobsSection(props: { ctx: ISidebarContext }): JSX.Element {
  const { ctx } = props;
  const { t, model } = ctx;
  useModel(model);
  const [filter, setFilter] = React.useState('');
  const [jobs, setJobs] = React.useState<IJob[] | null>(null);
  const [total, setTotal] = React.useState(0);
  const [error, setError] = React.useState('');
  const [logs, setLogs] = React.useState<Set<string>>(new Set());
  const [highlight, setHighlight] = React.useState<string | null>(null);
  const [schedules, setSchedules] = React.useState<ISchedule[] | null>(null);
  const [nonce, setNonce] = React.useState(0);
  const rootRef = React.useRef<HTMLDivElement>(null);
  const lastActive = React.useRef(new Set<string>());
  const reveal = model.reveal?.section === 'jobs' ? model.reveal : null;

  // Reveal a job: clear a filter that would hide it, open its log, highlight and scroll.
  React.useEffect(() => {
    if (!reveal) {
      return;
    }
    setFilter('');
    setHighlight(reveal.key);
    setLogs(old => new Set(old).add(reveal.key));
  }, [reveal?.nonce]);

  usePoll(async live => {
    let active = false;
    try {
      const list = await api.listJobs(filter || undefined);
      if (!live()) {
        return null;
      }
      let items = list.jobs ?? [];
      const wanted = model.reveal?.section === 'jobs' ? model.reveal.key : null;
      if (wanted && !items.some(j => j.id === wanted) && !filter) {
        try {
          items = [await api.job(wanted), ...items];
        } catch {
          // not ours or gone: nothing to reveal
        }
      }
      const ended = items.some(
        j => !ACTIVE_JOB_STATUSES.includes(j.status) && lastActive.current.has(j.id)
      );
      lastActive.current = new Set(
        items.filter(j => ACTIVE_JOB_STATUSES.includes(j.status)).map(j => j.id)
      );
      if (ended) {
        model.jobsEnded();
      }
      setJobs(items);
      setTotal(list.total ?? items.length);
      setError('');
      active = items.some(j => ACTIVE_JOB_STATUSES.includes(j.status));
    } catch (e) {
      if (!live()) {
        return null;
      }
      setError(errorMessage(e));
    }
    api
      .listSchedules()
      .then(s => live() && setSchedules(s.schedules ?? []))
      .catch(() => live() && setSchedules(null));
    return model.pollDelay(active);
  }, [filter, nonce, model.refreshNonce, model.visible]);

  React.useEffect(() => {
    if (highlight) {
      scrollToItem(rootRef.current, 'data-fermi-job', highlight);
    }
  }, [highlight, jobs]);

  const toggleLogs = (id: string) => setLogs(old => toggled(old, id));

  const deleteSchedule = async (s: ISchedule) => {
    if (!(await confirm(t, t('Delete the schedule?'), t('Schedule "{name}" ({cron}) stops starting jobs. Jobs it started are kept.', { name: s.name, cron: s.cron }), t('Delete')))) {
      return;
    }
    await attempt(t, N_('Could not delete the schedule: {message}'), async () => {
      await api.deleteSchedule(s.id);
      setNonce(n => n + 1);
    });
  };

  return (
    <Section id="jobs" title={t('Training jobs')} t={t} onRefresh={() => setNonce(n => n + 1)}>
      <GuideCard kind="training" t={t} guideUrl={model.settings.guideUrl} />
      <div className="fermi-toolbar">
        <SelectField
          label={`${t('Status')} `}
          field="status-filter"
          value={filter}
          onChange={setFilter}
          options={[
            { value: '', label: t('all') },
            ...JOB_STATUSES.map(s => ({ value: s, label: statusLabel(t, s) }))
          ]}
        />
        {jobs && total > jobs.length && (
          <span className="fermi-hint">{t('showing {n} of {total}', { n: jobs.length, total })}</span>
        )}
      </div>
      <ItemList
        t={t}
        items={jobs}
        error={error}
        empty={filter ? t('No jobs with this status.') : t('No jobs yet — open a notebook and click "Submit as training job" in its toolbar.')}
        listRef={rootRef}
      >
        {jobs?.map(job => (
          <JobRow
            key={job.id}
            ctx={ctx}
            job={job}
            highlighted={highlight === job.id}
            logsOpen={logs.has(job.id)}
            onToggleLogs={() => toggleLogs(job.id)}
            onChanged={() => setNonce(n => n + 1)}
          />
        ))}
      </ItemList>
      {schedules && schedules.length > 0 && (
        <div className="fermi-schedules">
          <div className="fermi-subtitle">{t('Schedules')}</div>
          {schedules.map(s => (
            <div key={s.id} className="fermi-item fermi-schedule" data-fermi-schedule={s.id}>
              <div className="fermi-item-head">
                <span className="fermi-item-name">{s.name}</span>
                <code>{s.cron}</code>
              </div>
              <div className="fermi-item-meta">
                <span>{t('next run {at}', { at: when(s.next_run_at) })}</span>
                {s.runs !== undefined && <span>{t('{n} runs', { n: s.runs })}</span>}
              </div>
              {s.last_error && <div className="fermi-reason">{s.last_error}</div>}
              <Actions
                actions={[{ id: 'delete-schedule', label: t('Delete'), onClick: () => void deleteSchedule(s) }]}
              />
            </div>
          ))}
        </div>
      )}
    </Section>
  );
}

function ModelVersions(props: { ctx: ISidebarContext; detail: IModel }): JSX.Element {
  const { ctx, detail } = props;
  const { t, model } = ctx;
  const promote = async (version: string) => {
    const deployment = await showDeployDialog(t, detail.name, version);
    if (!deployment) {
      return;
    }
    if (deployment.api_key) {
      model.apiKeys.set(deployment.name, deployment.api_key);
    }
    Notification.success(t('Inference service "{name}" is being deployed.', { name: deployment.name }), {
      autoClose: 8000,
      actions: [
        {
          label: t('Show'),
          callback: () => {
            void ctx.commands.execute('fermi:open-sidebar');
            model.revealItem('deployments', deployment.name);
          }
        }
      ]
    });
    model.revealItem('deployments', deployment.name);
  };
  if (!detail.versions.length) {
    return <div className="fermi-hint">{t('No versions yet.')}</div>;
  }
  return (
    <div className="fermi-versions">
      {detail.versions.map(v => (
        <div key={v.version} className="fermi-version" data-fermi-version={v.version}>
          <div className="fermi-item-head">
            <span className="fermi-version-label">v{v.version}</span>
            <span className={`fermi-status fermi-status-${v.status.toLowerCase()}`}>{v.status}</span>
            <span className="fermi-hint">{when(v.created_at)}</span>
          </div>
          {v.job ? (
            <div className="fermi-lineage">
              <div>
                {t('Job:')}{' '}
                <button className="fermi-link" onClick={() => model.revealItem('jobs', v.job!.id)}>
                  {v.job.name}
                </button>{' '}
                <span className="fermi-id">{v.job.id}</span>
              </div>
              <div className="fermi-hint">
                {v.job.notebook_name} · {v.job.image} · {v.job.profile}
              </div>
              <Params params={v.job.parameters} />
              <Metrics metrics={v.job.metrics} />
            </div>
          ) : (
            <div className="fermi-hint">{t('Registered outside a Fermi job: no lineage.')}</div>
          )}
          <Actions
            actions={[
              {
                id: 'promote',
                label: t('Promote'),
                classes: 'jp-mod-accept fermi-promote',
                onClick: () => void promote(v.version)
              }
            ]}
          />
        </div>
      ))}
    </div>
  );
}

function ModelsSection(props: { ctx: ISidebarContext }): JSX.Element {
  const { ctx } = props;
  const { t, model } = ctx;
  useModel(model);
  const [models, setModels] = React.useState<IModelSummary[] | null>(null);
  const [details, setDetails] = React.useState<Record<string, IModel | string>>({});
  const [collapsed, setCollapsed] = React.useState<Set<string>>(new Set());
  const [error, setError] = React.useState('');
  const [nonce, setNonce] = React.useState(0);
  const reveal = model.reveal?.section === 'models' ? model.reveal : null;
  const rootRef = React.useRef<HTMLDivElement>(null);

  usePoll(async live => {
    try {
      const list = (await api.listModels()).models ?? [];
      if (!live()) {
        return null;
      }
      setModels(list);
      setError('');
      const fetched = await Promise.all(
        list.slice(0, 20).map(m =>
          api.model(m.name).then(
            d => [m.name, d] as const,
            e => [m.name, errorMessage(e)] as const
          )
        )
      );
      if (live()) {
        setDetails(Object.fromEntries(fetched));
      }
    } catch (e) {
      if (live()) {
        setError(errorMessage(e));
      }
    }
    return Math.max(model.pollDelay(false), 15000);
  }, [nonce, model.refreshNonce, model.visible, model.jobsEndedNonce]);

  React.useEffect(() => {
    if (!reveal) {
      return;
    }
    setCollapsed(old => {
      const next = new Set(old);
      next.delete(reveal.key);
      return next;
    });
    scrollToItem(rootRef.current, 'data-fermi-model', reveal.key);
  }, [reveal?.nonce, models]);

  return (
    <Section id="models" title={t('Models')} t={t} onRefresh={() => setNonce(n => n + 1)}>
      <GuideCard kind="models" t={t} guideUrl={model.settings.guideUrl} />
      <ItemList t={t} items={models} error={error} empty={t('No models yet — a training job registers one when its notebook calls mlflow.<flavour>.log_model(..., registered_model_name="name").')} listRef={rootRef}>
        {models?.map(m => {
          const detail = details[m.name];
          const open = !collapsed.has(m.name);
          return (
            <div
              key={m.name}
              className={'fermi-item fermi-model' + (reveal?.key === m.name ? ' fermi-mod-highlight' : '')}
              data-fermi-model={m.name}
            >
              <div className="fermi-item-head">
                <button
                  className="fermi-section-toggle"
                  data-fermi-action="toggle"
                  aria-expanded={open}
                  onClick={() => setCollapsed(old => toggled(old, m.name))}
                >
                  <span className="fermi-caret">{open ? '▾' : '▸'}</span>{' '}
                  <span className="fermi-item-name">{m.name}</span>
                </button>
                {m.latest_version && <span className="fermi-chip">{t('latest v{v}', { v: m.latest_version })}</span>}
              </div>
              <div className="fermi-item-meta">
                <span>{t('owner {owner}', { owner: m.owner })}</span>
                {m.groups.length > 0 && <span>{t('shared with {groups}', { groups: m.groups.join(', ') })}</span>}
              </div>
              {open &&
                (detail === undefined ? (
                  <div className="fermi-hint">{t('Loading…')}</div>
                ) : typeof detail === 'string' ? (
                  <div className="fermi-error">{detail}</div>
                ) : (
                  <ModelVersions ctx={ctx} detail={detail} />
                ))}
            </div>
          );
        })}
      </ItemList>
    </Section>
  );
}

function Sparkline(props: { history: IReplicaCount[]; t: TFunc }): JSX.Element | null {
  const width = 120;
  const height = 24;
  const points = sparklinePoints(props.history, width, height);
  if (!points) {
    return null;
  }
  const max = Math.max(...props.history.map(h => h.replicas));
  return (
    <svg
      className="fermi-sparkline"
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      role="img"
      aria-label={props.t('Replicas over time')}
    >
      <title>{props.t('Replicas over time (max {max})', { max })}</title>
      <polyline points={points} fill="none" stroke="currentColor" strokeWidth="1.5" />
    </svg>
  );
}

function DeploymentRow(props: {
  ctx: ISidebarContext;
  deployment: IDeployment;
  history: IReplicaCount[];
  highlighted: boolean;
  onChanged: () => void;
}): JSX.Element {
  const { ctx, deployment: d, history, highlighted } = props;
  const { t, model } = ctx;
  const [snippets, setSnippets] = React.useState(false);
  const canary = d.revisions.find(r => r.role === 'canary');
  const stable = d.revisions.find(r => r.role === 'stable');
  const ready = d.revisions.reduce((n, r) => n + (r.ready_replicas ?? 0), 0);
  const apiKey = model.apiKeys.get(d.name);

  const patch = async (action: 'promote' | 'rollback') => {
    const title = action === 'promote' ? t('Promote the canary?') : t('Roll back the canary?');
    const body =
      action === 'promote'
        ? t('Version {version} takes all of the traffic of "{name}".', { name: d.name, version: canary?.version ?? '' })
        : t('Version {version} is removed; "{name}" serves the stable version only.', { name: d.name, version: canary?.version ?? '' });
    if (!(await confirm(t, title, body, action === 'promote' ? t('Promote') : t('Roll back')))) {
      return;
    }
    await attempt(t, N_('The inference service could not be changed: {message}'), async () => {
      await api.patchDeployment(d.name, { action });
      props.onChanged();
    });
  };

  const remove = async () => {
    if (!(await confirm(t, t('Delete the inference service?'), t('"{name}" drains its replicas and stops; its URL stops answering.', { name: d.name }), t('Delete')))) {
      return;
    }
    await attempt(t, N_('The inference service could not be changed: {message}'), async () => {
      await api.deleteDeployment(d.name);
      props.onChanged();
    });
  };

  return (
    <div
      className={'fermi-item fermi-deployment' + (highlighted ? ' fermi-mod-highlight' : '')}
      data-fermi-deployment={d.name}
      data-fermi-status={d.status}
    >
      <div className="fermi-item-head">
        <span className={`fermi-status fermi-status-${d.status}`}>{statusLabel(t, d.status)}</span>
        <span className="fermi-item-name">{d.name}</span>
        <span className="fermi-hint">
          {d.model} v{d.version}
        </span>
      </div>
      <div className="fermi-item-meta">
        <span>
          {t('replicas {ready}/{desired} ({min}–{max})', { ready, desired: d.desired_replicas, min: d.min_replicas, max: d.max_replicas })}
        </span>
        <Sparkline history={history} t={t} />
        <span>{d.engine}</span>
        <span>{d.profile}</span>
      </div>
      {d.reason && <div className="fermi-reason">{d.reason}</div>}
      <div className="fermi-revisions">
        {stable && (
          <span className="fermi-chip">
            {t('stable v{version} · {percent}%', { version: stable.version, percent: stable.traffic_percent })}
          </span>
        )}
        {canary && (
          <span className="fermi-chip fermi-chip-canary">
            {t('canary v{version} · {percent}%', { version: canary.version, percent: canary.traffic_percent })}
          </span>
        )}
        {d.traffic && (
          <span className="fermi-hint">
            {t('{requests} requests · {errors} errors · {inflight} in flight', {
              requests: d.traffic.requests ?? 0,
              errors: d.traffic.errors ?? 0,
              inflight: d.traffic.in_flight ?? 0
            })}
            {d.traffic.latency_ms?.p50 !== undefined
              ? ` · p50 ${formatMetric(d.traffic.latency_ms.p50)} ms`
              : ''}
            {d.traffic.latency_ms?.p95 !== undefined
              ? ` · p95 ${formatMetric(d.traffic.latency_ms.p95)} ms`
              : ''}
          </span>
        )}
      </div>
      <div className="fermi-url-row">
        <code className="fermi-deployment-url">{d.url}</code>
        <CopyButton t={t} text={d.url} action="copy-url" title={t('Copy the API URL')} />
      </div>
      {apiKey && (
        <div className="fermi-key">
          <KeySnippet t={t} apiKey={apiKey} />
        </div>
      )}
      <Actions
        actions={[
          {
            id: 'snippets',
            label: snippets ? t('Hide snippets') : t('API snippets'),
            pressed: snippets,
            onClick: () => setSnippets(!snippets)
          },
          {
            id: 'scale',
            label: t('Scale'),
            onClick: async () => (await showScaleDialog(t, d)) && props.onChanged()
          },
          {
            id: 'canary',
            label: t('Canary'),
            onClick: async () => (await showCanaryDialog(t, d)) && props.onChanged()
          },
          ...(['promote', 'rollback'] as const).map(action => ({
            id: action,
            label: action === 'promote' ? t('Promote') : t('Roll back'),
            disabled: !canary,
            title: canary ? undefined : t('No canary running: start one with Canary.'),
            onClick: () => void patch(action)
          })),
          {
            id: 'delete',
            label: t('Delete'),
            classes: 'jp-mod-minimal jp-mod-warn',
            onClick: () => void remove()
          }
        ]}
      />
      {snippets && (
        <div className="fermi-snippets">
          <div className="fermi-hint">{t('Set FERMI_API_KEY to the service\'s API key (or use your hub token with "Authorization: token …").')}</div>
          <UsageSnippets t={t} deployment={d} headingClass="fermi-subtitle" />
        </div>
      )}
      {d.events && d.events.length > 0 && (
        <details className="fermi-events">
          <summary>{t('Events ({n})', { n: d.events.length })}</summary>
          <ul>
            {d.events
              .slice(-8)
              .reverse()
              .map((e, i) => (
                <li key={`${e.at}-${i}`}>
                  <span className="fermi-hint">{when(e.at)}</span> {e.message}
                </li>
              ))}
          </ul>
        </details>
      )}
    </div>
  );
}

function DeploymentsSection(props: { ctx: ISidebarContext }): JSX.Element {
  const { ctx } = props;
  const { t, model } = ctx;
  useModel(model);
  const [deployments, setDeployments] = React.useState<IDeployment[] | null>(null);
  const [error, setError] = React.useState('');
  const [nonce, setNonce] = React.useState(0);
  const samples = React.useRef(new Map<string, IReplicaCount[]>());
  const reveal = model.reveal?.section === 'deployments' ? model.reveal : null;
  const rootRef = React.useRef<HTMLDivElement>(null);

  usePoll(async live => {
    let pending = false;
    try {
      const list = (await api.listDeployments()).deployments ?? [];
      // The list has no replica history: describe each (a few) for it and the events.
      const described = await Promise.all(
        list.slice(0, 20).map(d => api.deployment(d.name).catch(() => d))
      );
      const all = [...described, ...list.slice(20)];
      if (!live()) {
        return null;
      }
      const now = new Date().toISOString();
      for (const d of all) {
        const s = samples.current.get(d.name) ?? [];
        s.push({ at: now, replicas: d.desired_replicas });
        samples.current.set(d.name, s.slice(-120));
      }
      setDeployments(all);
      setError('');
      pending = all.some(d => d.status === 'pending' || d.revisions.some(r => r.role === 'canary'));
    } catch (e) {
      if (live()) {
        setError(errorMessage(e));
      }
    }
    return model.pollDelay(pending);
  }, [nonce, model.refreshNonce, model.visible]);

  React.useEffect(() => {
    if (!reveal) {
      return;
    }
    scrollToItem(rootRef.current, 'data-fermi-deployment', reveal.key);
  }, [reveal?.nonce, deployments]);

  return (
    <Section id="deployments" title={t('Inference services')} t={t} onRefresh={() => setNonce(n => n + 1)}>
      <GuideCard kind="inference" t={t} guideUrl={model.settings.guideUrl} />
      <ItemList t={t} items={deployments} error={error} empty={t('No inference services yet — open a model version under Models and click Promote.')} listRef={rootRef}>
        {deployments?.map(d => (
          <DeploymentRow
            key={d.name}
            ctx={ctx}
            deployment={d}
            history={
              d.replica_history && d.replica_history.length
                ? d.replica_history
                : samples.current.get(d.name) ?? []
            }
            highlighted={reveal?.key === d.name}
            onChanged={() => setNonce(n => n + 1)}
          />
        ))}
      </ItemList>
    </Section>
  );
}

function EnvironmentCard(props: { ctx: ISidebarContext }): JSX.Element {
  const { ctx } = props;
  const { t, model } = ctx;
  const [env, setEnv] = React.useState<IEnvironment | null>(null);
  React.useEffect(() => {
    api
      .environment()
      .then(setEnv)
      .catch(() => setEnv(null));
  }, []);
  const extra = env ? (
    <div className="fermi-card-env">
      {t('This server: profile {profile} · {gpus} GPU · {price} / h', {
        profile: env.profile ?? t('Default'),
        gpus: env.gpus,
        price: env.price_per_hour === null ? '—' : formatPrice(env.price_per_hour)
      })}
    </div>
  ) : null;
  return <GuideCard kind="dev" t={t} guideUrl={model.settings.guideUrl} className="fermi-env-card" extra={extra} />;
}

function SidebarView(props: { ctx: ISidebarContext }): JSX.Element {
  const { ctx } = props;
  return (
    <div className="fermi-sidebar-content">
      <div className="fermi-sidebar-title">{ctx.t('Fermi')}</div>
      <EnvironmentCard ctx={ctx} />
      <JobsSection ctx={ctx} />
      <ModelsSection ctx={ctx} />
      <DeploymentsSection ctx={ctx} />
    </div>
  );
}

/** The left-area widget, id `fermi-sidebar`. */
export class FermiSidebar extends ReactWidget {
  constructor(private readonly _ctx: ISidebarContext) {
    super();
    this.id = 'fermi-sidebar';
    this.addClass('fermi-sidebar');
    this.title.icon = fermiIcon;
    this.title.caption = _ctx.t('Fermi: training jobs, models and inference services');
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._ctx.model.setVisible(true);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._ctx.model.setVisible(false);
  }

  render(): JSX.Element {
    return <SidebarView ctx={this._ctx} />;
  }
}
