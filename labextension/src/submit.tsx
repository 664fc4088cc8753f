/** The "Submit as training job" dialog. */

import * as React from 'react';

import { api } from './api';
import { FormController, runFormDialog } from './dialog';
import { InputField, NumberField, profileOptions, SelectField } from './fields';
import { buildSubmitBody, clampPriority, costEstimate, cronError, imageLabel, jobNameFromPath } from './format';
import { N_, type TFunc } from './i18n';
import { inputKind, initialInputs, parseAll, ParamInput } from './params';
import { ErrorBox } from './guide';
import { errorMessage, reportErrors } from './request';
import type { ICatalog, IEnvironment, IJob, IParameter, IProfile, ISchedule } from './types';

/** Whether to send `image_version` (the control plane's CreateJob has no such field yet). */
export const SEND_IMAGE_VERSION = true;

export type SubmitResult =
  | { kind: 'job'; job: IJob }
  | { kind: 'schedule'; schedule: ISchedule };

export interface ISubmitDialogOptions {
  path: string;
  t: TFunc;
  /** Whether the open notebook has unsaved changes. */
  dirty: boolean;
  /** Saves the open notebook (for "Save and submit"). */
  save?: () => Promise<void>;
  /** Where the dialog came from, shown as a hint (e.g. the misuse guard). */
  reason?: string;
}

interface IFormProps extends ISubmitDialogOptions {
  controller: FormController<SubmitResult>;
}

/** The save-mode radios shown when the notebook has unsaved changes. */
const SAVE_MODES = [
  { mode: 'save', label: N_('Save and submit') },
  { mode: 'saved', label: N_('Submit the last saved version') }
] as const;

function pickDefaults(catalog: ICatalog, env: IEnvironment | null) {
  const images = catalog.images;
  const image =
    images.find(i => env?.image && i.slug === env.image) ??
    images.find(i => i.featured && !i.deprecated) ??
    images.find(i => !i.deprecated) ??
    images[0];
  const versions = image?.versions ?? [];
  const version =
    versions.find(v => env?.image_version && v.tag === env.image_version && image?.slug === env?.image) ??
    versions[0];
  const available = catalog.profiles.filter(p => p.available !== false);
  const profile =
    available.find(p => p.default) ??
    available.find(p => env?.profile && p.slug === env.profile) ??
    available[0] ??
    catalog.profiles[0];
  return {
    image: image?.slug ?? '',
    imageVersion: version?.tag ?? '',
    profile: profile?.slug ?? ''
  };
}

function SubmitForm(props: IFormProps): JSX.Element {
  const { t, path, controller } = props;
  const [loading, setLoading] = React.useState(true);
  const [params, setParams] = React.useState<IParameter[]>([]);
  const [inputs, setInputs] = React.useState<Record<string, ParamInput>>({});
  const [paramErrors, setParamErrors] = React.useState<Record<string, string>>({});
  const [catalog, setCatalog] = React.useState<ICatalog>({ images: [], profiles: [], pools: [] });
  const [name, setName] = React.useState(jobNameFromPath(path));
  const [image, setImage] = React.useState('');
  const [imageVersion, setImageVersion] = React.useState('');
  const [profile, setProfile] = React.useState('');
  const [priority, setPriority] = React.useState('0');
  const [schedule, setSchedule] = React.useState('');
  const [saveMode, setSaveMode] = React.useState<'save' | 'saved'>('save');
  const [error, setError] = React.useState('');
  const [notes, setNotes] = React.useState<string[]>([]);
  const [busy, setBusy] = React.useState(false);

  React.useEffect(() => {
    let live = true;
    void Promise.allSettled([api.parameters(path), api.catalog(), api.environment()]).then(
      ([p, c, e]) => {
        if (!live) {
          return;
        }
        const problems: string[] = [];
        if (p.status === 'fulfilled') {
          const list = p.value.parameters ?? [];
          setParams(list);
          setInputs(initialInputs(list));
        } else {
          problems.push(t('Could not read the notebook\'s parameters: {message}', { message: errorMessage(p.reason) }));
        }
        const env = e.status === 'fulfilled' ? e.value : null;
        if (c.status === 'fulfilled') {
          setCatalog(c.value);
          const d = pickDefaults(c.value, env);
          setImage(d.image);
          setImageVersion(d.imageVersion);
          setProfile(d.profile);
        } else {
          problems.push(t('Could not load the images and profiles (the defaults will be used): {message}', { message: errorMessage(c.reason) }));
        }
        setNotes(problems);
        setLoading(false);
      }
    );
    return () => {
      live = false;
    };
  }, [path]);

  const selectedImage = catalog.images.find(i => i.slug === image);
  const selectedProfile: IProfile | undefined = catalog.profiles.find(p => p.slug === profile);
  const scheduled = schedule.trim() !== '';

  controller.submit = async () => {
    if (busy) {
      return false;
    }
    if (loading) {
      setError(t('Still loading the form; try again in a moment.'));
      return false;
    }
    const parsed = parseAll(params, inputs, t);
    const byName: Record<string, string> = {};
    for (const e of parsed.errors) {
      byName[e.name] = e.message;
    }
    setParamErrors(byName);
    if (parsed.errors.length) {
      setError(parsed.errors.map(e => e.message).join(' '));
      return false;
    }
    const cronProblem = cronError(schedule, t);
    if (cronProblem) {
      setError(cronProblem);
      return false;
    }
    const p = Number(priority);
    if (!Number.isInteger(p) || p < -100 || p > 100) {
      setError(t('Priority must be a whole number from -100 to 100.'));
      return false;
    }
    if (selectedProfile && selectedProfile.available === false) {
      setError(
        t('unavailable: {reason}', { reason: selectedProfile.unavailable_reason || '' }) +
          ' ' +
          t('Choose another profile.')
      );
      return false;
    }
    setError('');
    setBusy(true);
    const ok = await reportErrors(async () => {
      if (props.dirty && saveMode === 'save' && props.save) {
        await props.save();
      }
      const body = buildSubmitBody(
        {
          path,
          parameters: parsed.values,
          name,
          image,
          imageVersion,
          profile,
          priority: clampPriority(priority),
          schedule
        },
        { includeImageVersion: SEND_IMAGE_VERSION }
      );
      if (body.cron) {
        controller.result = { kind: 'schedule', schedule: await api.createSchedule(body) };
      } else {
        controller.result = { kind: 'job', job: await api.submitJob(body) };
      }
    }, setError);
    setBusy(false);
    return ok;
  };

  const setInput = (key: string, value: ParamInput) => {
    setInputs(old => ({ ...old, [key]: value }));
    if (paramErrors[key]) {
      setParamErrors(old => {
        const next = { ...old };
        delete next[key];
        return next;
      });
    }
  };

  const renderParam = (param: IParameter) => {
    const kind = inputKind(param.type);
    const value = inputs[param.name];
    const id = `fermi-param-${param.name}`;
    const invalid = paramErrors[param.name];
    let control: JSX.Element;
    if (kind === 'checkbox') {
      control = (
        <input
          id={id}
          type="checkbox"
          data-fermi-param={param.name}
          checked={value === true}
          onChange={e => setInput(param.name, e.currentTarget.checked)}
        />
      );
    } else if (kind === 'json') {
      control = (
        <textarea
          id={id}
          className="jp-mod-styled fermi-json"
          data-fermi-param={param.name}
          rows={Math.min(6, Math.max(1, String(value ?? '').split('\n').length))}
          spellCheck={false}
          value={String(value ?? '')}
          onChange={e => setInput(param.name, e.currentTarget.value)}
        />
      );
    } else {
      control = (
        <input
          id={id}
          className="jp-mod-styled"
          type={kind === 'number' ? 'number' : 'text'}
          step={kind === 'number' ? 'any' : undefined}
          data-fermi-param={param.name}
          value={String(value ?? '')}
          onChange={e => setInput(param.name, e.currentTarget.value)}
        />
      );
    }
    return (
      <div
        key={param.name}
        className={'fermi-param' + (invalid ? ' fermi-mod-invalid' : '')}
        title={param.help || undefined}
      >
        <label htmlFor={id}>
          <code>{param.name}</code>
          <span className="fermi-param-type">{param.type}</span>
        </label>
        {control}
        {kind === 'json' && <div className="fermi-hint">{t('JSON')}</div>}
        {param.help && <div className="fermi-hint">{param.help}</div>}
        {invalid && <div className="fermi-field-error">{invalid}</div>}
      </div>
    );
  };

  const versions = selectedImage?.versions ?? [];

  return (
    <div className="fermi-form">
      {props.reason && <div className="fermi-notice">{props.reason}</div>}
      <div className="fermi-hint">
        {t('Runs a snapshot of {path} as a batch job: it is queued, runs on the profile you choose, records parameters and metrics, and frees its resources when it ends. Stopping this server does not stop it.', { path })}
      </div>
      {props.dirty && (
        <div className="fermi-notice fermi-dirty" data-fermi-field="save_mode">
          <div>{t('This notebook has unsaved changes.')}</div>
          {SAVE_MODES.map(({ mode, label }) => (
            <label key={mode}>
              <input
                type="radio"
                name="fermi-save-mode"
                value={mode}
                checked={saveMode === mode}
                onChange={() => setSaveMode(mode)}
              />{' '}
              {t(label)}
            </label>
          ))}
        </div>
      )}
      {notes.map(n => (
        <div key={n} className="fermi-notice fermi-warning">
          {n}
        </div>
      ))}
      <fieldset className="fermi-fieldset">
        <legend>{t('Parameters')}</legend>
        {loading ? (
          <div className="fermi-hint">{t('Loading…')}</div>
        ) : params.length ? (
          params.map(renderParam)
        ) : (
          <div className="fermi-hint">{t('No parameters detected. Tag a cell "parameters" to set values at submission.')}</div>
        )}
      </fieldset>
      <fieldset className="fermi-fieldset">
        <legend>{t('Image and resources')}</legend>
        <div className="fermi-row">
          <SelectField
            label={t('Image')}
            field="image"
            value={image}
            onChange={slug => {
              setImage(slug);
              const img = catalog.images.find(i => i.slug === slug);
              setImageVersion(img?.versions?.[0]?.tag ?? '');
            }}
            options={catalog.images.map(i => ({ value: i.slug, label: imageLabel(i, t) }))}
            empty={t('Default')}
          />
          <SelectField
            label={t('Version')}
            field="image_version"
            value={imageVersion}
            onChange={setImageVersion}
            options={versions.map(v => ({
              value: v.tag,
              label:
                v.tag +
                (v.labels && Object.keys(v.labels).length
                  ? ` (${Object.entries(v.labels)
                      .map(([k, val]) => `${k} ${val}`)
                      .join(', ')})`
                  : '')
            }))}
            empty={t('Default')}
          />
        </div>
        {selectedImage?.deprecated && selectedImage.redirect_message && (
          <div className="fermi-notice fermi-warning">{selectedImage.redirect_message}</div>
        )}
        <SelectField
          label={t('Profile')}
          field="profile"
          value={profile}
          onChange={setProfile}
          options={profileOptions(catalog.profiles, t, true)}
          empty={t('Default')}
        />
        <div className="fermi-cost-estimate">{costEstimate(selectedProfile, t, scheduled)}</div>
      </fieldset>
      <fieldset className="fermi-fieldset">
        <legend>{t('Job')}</legend>
        <div className="fermi-row">
          <InputField label={t('Name')} field="name" type="text" value={name} onChange={setName} />
          <NumberField
            label={t('Priority')}
            field="priority"
            step="any"
            title={t('-100 to 100; higher runs first')}
            value={priority}
            onChange={setPriority}
          />
        </div>
        <InputField
          label={t('Schedule (cron, UTC, optional)')}
          field="schedule"
          type="text"
          placeholder="0 3 * * *"
          value={schedule}
          onChange={setSchedule}
        />
        <div className="fermi-hint">{t('For periodic retraining, e.g. "0 3 * * *" runs every day at 03:00 UTC. Leave empty to run once now.')}</div>
      </fieldset>
      {busy && <div className="fermi-hint">{t('Submitting…')}</div>}
      <ErrorBox error={error} />
    </div>
  );
}

/** Open the dialog; resolves with what was created, or null when cancelled. */
export function showSubmitDialog(options: ISubmitDialogOptions): Promise<SubmitResult | null> {
  const { t } = options;
  return runFormDialog<SubmitResult>(t, {
    title: t('Submit as training job'),
    accept: t('Submit'),
    className: 'fermi-submit-dialog',
    bodyClassName: 'fermi-submit-body',
    render: controller => <SubmitForm {...options} controller={controller} />
  });
}
