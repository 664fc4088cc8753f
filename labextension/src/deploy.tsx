/** Dialogs of the Models and Deployments sections: deploy (Promote), scale, canary, API key. */

import { Dialog, ReactWidget, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { api } from './api';
import { FormController, runFormDialog } from './dialog';
import { CopyButton, InputField, NumberField, profileOptions, ReplicaFields, SelectField } from './fields';
import {
  curlSnippet,
  deploymentNameFrom,
  intIn,
  IReplicaInput,
  isDeploymentName,
  parseReplicas,
  pythonSnippet
} from './format';
import type { TFunc } from './i18n';
import { ErrorBox } from './guide';
import { errorMessage, reportErrors } from './request';
import { ENGINES, Engine, IDeployment, IProfile } from './types';

type Controller = FormController<IDeployment>;

function useProfiles(): [IProfile[], string] {
  const [profiles, setProfiles] = React.useState<IProfile[]>([]);
  const [problem, setProblem] = React.useState('');
  React.useEffect(() => {
    let live = true;
    api
      .catalog()
      .then(c => live && setProfiles(c.profiles))
      .catch(e => live && setProblem(errorMessage(e)));
    return () => {
      live = false;
    };
  }, []);
  return [profiles, problem];
}

interface IDeployProps {
  t: TFunc;
  model: string;
  version: string;
  controller: Controller;
}

function DeployForm(props: IDeployProps): JSX.Element {
  const { t, model, version, controller } = props;
  const [profiles, catalogProblem] = useProfiles();
  const [name, setName] = React.useState(deploymentNameFrom(model));
  const [engine, setEngine] = React.useState<Engine>('auto');
  const [profile, setProfile] = React.useState('');
  const [replicas, setReplicas] = React.useState<IReplicaInput>({ min: '1', max: '1', target: '4' });
  const [error, setError] = React.useState('');
  const [busy, setBusy] = React.useState(false);

  React.useEffect(() => {
    if (!profile && profiles.length) {
      const available = profiles.filter(p => p.available !== false);
      setProfile((available.find(p => p.default) ?? available[0] ?? profiles[0]).slug);
    }
  }, [profiles]);

  const selected = profiles.find(p => p.slug === profile);

  controller.submit = async () => {
    if (busy) {
      return false;
    }
    if (!isDeploymentName(name)) {
      setError(t('"{name}" is not a valid service name: use lowercase letters, digits and "-" (up to 40, not starting or ending with "-").', { name }));
      return false;
    }
    const settings = parseReplicas(replicas, t);
    if (typeof settings === 'string') {
      setError(settings);
      return false;
    }
    setError('');
    setBusy(true);
    const ok = await reportErrors(async () => {
      controller.result = await api.createDeployment({
        name,
        model,
        version,
        engine,
        profile: profile || null,
        ...settings
      });
    }, setError);
    setBusy(false);
    return ok;
  };

  return (
    <div className="fermi-form">
      <div className="fermi-hint">{t('Serves {model} version {version} as an online API (Open Inference Protocol V2), autoscaled between the replica bounds.', { model, version })}</div>
      {catalogProblem && <div className="fermi-notice fermi-warning">{catalogProblem}</div>}
      <InputField label={t('Service name')} field="name" value={name} onChange={setName} />
      <div className="fermi-hint">{t('Lowercase letters, digits and "-", up to 40 characters; it becomes part of the URL.')}</div>
      <div className="fermi-row">
        <SelectField
          label={t('Engine')}
          field="engine"
          value={engine}
          onChange={v => setEngine(v as Engine)}
          options={ENGINES.map(e => ({ value: e, label: e === 'auto' ? t('auto (from the model)') : e }))}
        />
        <SelectField
          label={t('Profile')}
          field="profile"
          value={profile}
          onChange={setProfile}
          options={profileOptions(profiles, t)}
          empty={t('Default')}
        />
      </div>
      <ReplicaFields t={t} value={replicas} onChange={setReplicas} />
      <div className="fermi-cost-estimate">
        {selected
          ? t('Estimated cost: {price} / h per replica; at least {min} replica(s) keep running.', {
              price: Number(selected.price_per_hour ?? 0).toFixed(2),
              min: replicas.min
            })
          : ''}
      </div>
      {busy && <div className="fermi-hint">{t('Deploying…')}</div>}
      <ErrorBox error={error} />
    </div>
  );
}

/** The deploy dialog of a model version's Promote button. */
export function showDeployDialog(t: TFunc, model: string, version: string): Promise<IDeployment | null> {
  return runFormDialog<IDeployment>(t, {
    title: t('Deploy {model} v{version}', { model, version }),
    accept: t('Deploy'),
    className: 'fermi-deploy-dialog',
    render: controller => <DeployForm t={t} model={model} version={version} controller={controller} />,
    focus: '[data-fermi-field="name"]'
  });
}

interface IDeploymentFormProps {
  t: TFunc;
  deployment: IDeployment;
  controller: Controller;
}

/** A dialog of a deployment's form (scale, canary), applied with its Apply button. */
function showDeploymentDialog(
  t: TFunc,
  deployment: IDeployment,
  title: string,
  className: string,
  Form: (props: IDeploymentFormProps) => JSX.Element,
  focusField: string
): Promise<IDeployment | null> {
  return runFormDialog<IDeployment>(t, {
    title,
    accept: t('Apply'),
    className,
    render: controller => <Form t={t} deployment={deployment} controller={controller} />,
    focus: `[data-fermi-field="${focusField}"]`
  });
}

function ScaleForm(props: IDeploymentFormProps): JSX.Element {
  const { t, deployment, controller } = props;
  const [replicas, setReplicas] = React.useState<IReplicaInput>({
    min: String(deployment.min_replicas),
    max: String(deployment.max_replicas),
    target: String(deployment.target_concurrency)
  });
  const [error, setError] = React.useState('');
  controller.submit = async () => {
    const settings = parseReplicas(replicas, t);
    if (typeof settings === 'string') {
      setError(settings);
      return false;
    }
    return reportErrors(async () => {
      controller.result = await api.patchDeployment(deployment.name, settings);
    }, setError);
  };
  return (
    <div className="fermi-form">
      <ReplicaFields t={t} value={replicas} onChange={setReplicas} />
      <ErrorBox error={error} />
    </div>
  );
}

export function showScaleDialog(t: TFunc, deployment: IDeployment): Promise<IDeployment | null> {
  const title = t('Scale {name}', { name: deployment.name });
  return showDeploymentDialog(t, deployment, title, 'fermi-scale-dialog', ScaleForm, 'min_replicas');
}

function CanaryForm(props: IDeploymentFormProps): JSX.Element {
  const { t, deployment, controller } = props;
  const canary = deployment.revisions.find(r => r.role === 'canary');
  const [versions, setVersions] = React.useState<string[]>([]);
  const [version, setVersion] = React.useState(canary?.version ?? '');
  const [percent, setPercent] = React.useState(String(canary?.traffic_percent ?? 10));
  const [error, setError] = React.useState('');
  React.useEffect(() => {
    let live = true;
    api
      .model(deployment.model)
      .then(m => {
        if (!live) {
          return;
        }
        const list = m.versions.map(v => v.version).filter(v => v !== deployment.version);
        setVersions(list);
        if (!version && list.length) {
          setVersion(list[0]);
        }
      })
      .catch(() => undefined);
    return () => {
      live = false;
    };
  }, []);
  controller.submit = async () => {
    const p = intIn(percent, 0, 100);
    if (!version.trim()) {
      setError(t('Choose the model version the canary serves.'));
      return false;
    }
    if (p === null) {
      setError(t('Traffic must be a whole percentage from 0 to 100.'));
      return false;
    }
    return reportErrors(async () => {
      controller.result = await api.patchDeployment(deployment.name, {
        canary: { version: version.trim(), trafficPercent: p }
      });
    }, setError);
  };
  return (
    <div className="fermi-form">
      <div className="fermi-hint">
        {t('Send part of the traffic to another version of {model} (stable: v{version}); then promote or roll back.', { model: deployment.model, version: deployment.version })}
      </div>
      <div className="fermi-row">
        <InputField
          label={t('Model version')}
          field="version"
          list="fermi-canary-versions"
          value={version}
          onChange={setVersion}
        >
          <datalist id="fermi-canary-versions">
            {versions.map(v => (
              <option key={v} value={v} />
            ))}
          </datalist>
        </InputField>
        <NumberField
          label={t('Traffic %')}
          field="traffic_percent"
          value={percent}
          onChange={setPercent}
        />
      </div>
      <ErrorBox error={error} />
    </div>
  );
}

export function showCanaryDialog(t: TFunc, deployment: IDeployment): Promise<IDeployment | null> {
  const title = t('Canary release of {name}', { name: deployment.name });
  return showDeploymentDialog(t, deployment, title, 'fermi-canary-dialog', CanaryForm, 'version');
}

/** Copyable code block. */
export function Snippet(props: { t: TFunc; text: string; action: string }): JSX.Element {
  const { t, text, action } = props;
  return (
    <div className="fermi-snippet">
      <pre>{text}</pre>
      <CopyButton t={t} text={text} action={action} className="jp-Button jp-mod-minimal fermi-copy" />
    </div>
  );
}

/** A new deployment's API key, with the warning that it is shown once. */
export function KeySnippet(props: { t: TFunc; apiKey: string }): JSX.Element {
  const { t, apiKey } = props;
  return (
    <>
      <div className="fermi-notice fermi-warning">{t('API key — shown only once, copy it now:')}</div>
      <Snippet t={t} text={apiKey} action="copy-key" />
    </>
  );
}

/** How to call a deployment: curl and Python, each under a heading of class `headingClass`. */
export function UsageSnippets(props: { t: TFunc; deployment: IDeployment; headingClass: string }): JSX.Element {
  const { t, deployment, headingClass } = props;
  return (
    <>
      <div className={headingClass}>curl</div>
      <Snippet t={t} text={curlSnippet(deployment)} action="copy-curl" />
      <div className={headingClass}>Python</div>
      <Snippet t={t} text={pythonSnippet(deployment)} action="copy-python" />
    </>
  );
}

/** After a deployment is created: its URL and its API key, shown once. */
export async function showApiKeyDialog(t: TFunc, deployment: IDeployment): Promise<void> {
  const body = ReactWidget.create(
    <div className="fermi-form fermi-key-body">
      <div>{t('Inference service "{name}" answers at:', { name: deployment.name })}</div>
      <div className="fermi-key-url">{deployment.url}</div>
      {deployment.api_key && <KeySnippet t={t} apiKey={deployment.api_key} />}
      <UsageSnippets t={t} deployment={deployment} headingClass="fermi-hint" />
    </div>
  );
  await showDialog({
    title: t('Inference service {name}', { name: deployment.name }),
    body,
    buttons: [Dialog.okButton({ label: t('Close') })]
  });
}
