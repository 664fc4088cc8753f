/** Guide cards: what a module is for, its traits and billing, and when to use another. */

import * as React from 'react';

import { N_, type TFunc } from './i18n';

export type GuideKind = 'dev' | 'training' | 'models' | 'inference' | 'images';

const KEYS: Record<GuideKind, { title: string; what: string; traits: string; billing: string; instead: string }> = {
  dev: {
    title: N_('Dev environment'),
    what: N_('An interactive container instance for developing code, analysing data and debugging experiments — this JupyterLab.'),
    traits: N_('Long-running and interactive|Terminal and Jupyter|You start and stop it; idle ones are culled'),
    billing: N_('running time × the profile\'s price, until you stop it.'),
    instead: N_('long or large training → a training job; serving a production API → an inference service.')
  },
  training: {
    title: N_('Training jobs'),
    what: N_('Batch training jobs for large-scale model training and experiment management.'),
    traits: N_('A batch run with a start and an end|Queued and scheduled automatically|Parameters and metrics tracked|Resources freed when it ends'),
    billing: N_('job run time × the profile\'s price; nothing while queued.'),
    instead: N_('interactive debugging → the dev environment; serving a model → an inference service.')
  },
  models: {
    title: N_('Model repository'),
    what: N_('Model versions registered by training jobs, each with its lineage: job, parameters and metrics.'),
    traits: N_('Versioned|Traceable to the job that produced it|Shareable with groups|Promote a version to an inference service'),
    billing: N_('no compute cost for stored versions.'),
    instead: N_('a new version → submit a training job; calling a model → deploy it (Promote).')
  },
  inference: {
    title: N_('Inference services'),
    what: N_('Online API services for model inference in production.'),
    traits: N_('Served behind a load balancer|Autoscaling between min and max replicas|Versions with canary releases|Built for production'),
    billing: N_('replica running time × the profile\'s price; min replicas keep running.'),
    instead: N_('trying a model → the dev environment; batch predictions → a training job.')
  },
  images: {
    title: N_('Images'),
    what: N_('Official, community and custom images with versions, reused by dev environments, jobs and services.'),
    traits: N_('Versions with Python, CUDA and framework labels|Featured and deprecated images'),
    billing: N_('no cost.'),
    instead: N_('setting up dependencies by hand each time → ask for a custom image.')
  }
};

function storedCollapsed(kind: GuideKind): boolean {
  try {
    return window.localStorage.getItem(`fermi:guide-collapsed:${kind}`) === '1';
  } catch {
    return false;
  }
}

export function GuideCard(props: {
  kind: GuideKind;
  t: TFunc;
  guideUrl: string;
  className?: string;
  extra?: React.ReactNode;
}): JSX.Element {
  const { kind, t, guideUrl } = props;
  const keys = KEYS[kind];
  const [collapsed, setCollapsed] = React.useState(() => storedCollapsed(kind));
  const toggle = () => {
    const next = !collapsed;
    setCollapsed(next);
    try {
      window.localStorage.setItem(`fermi:guide-collapsed:${kind}`, next ? '1' : '0');
    } catch {
      // private mode: not remembered
    }
  };
  return (
    <div
      className={`${props.className ?? 'fermi-guide-card'} fermi-card fermi-card-${kind}`}
      data-fermi-guide={kind}
    >
      <div className="fermi-card-head">
        <span className="fermi-card-title">{t(keys.title)}</span>
        <button
          className="fermi-card-toggle"
          aria-expanded={!collapsed}
          title={collapsed ? t('Show details') : t('Hide details')}
          onClick={toggle}
        >
          {collapsed ? '+' : '−'}
        </button>
      </div>
      <div className="fermi-card-what">{t(keys.what)}</div>
      {props.extra}
      {!collapsed && (
        <>
          <ul className="fermi-card-traits">
            {t(keys.traits)
              .split('|')
              .map(s => (
                <li key={s}>{s}</li>
              ))}
          </ul>
          <div className="fermi-card-billing">
            <b>{t('Billing:')}</b> {t(keys.billing)}
          </div>
          <div className="fermi-card-instead">
            <b>{t('Use another module:')}</b> {t(keys.instead)}
          </div>
        </>
      )}
      <a className="fermi-card-link" href={guideUrl} target="_blank" rel="noopener noreferrer">
        {t('Usage guide →')}
      </a>
    </div>
  );
}

/** The dialogs' error box (`.fermi-error`), scrolled into view when a message appears. */
export function ErrorBox(props: { error: string }): JSX.Element {
  const ref = React.useRef<HTMLDivElement>(null);
  React.useEffect(() => {
    if (props.error && ref.current && typeof ref.current.scrollIntoView === 'function') {
      ref.current.scrollIntoView({ block: 'nearest' });
    }
  }, [props.error]);
  return (
    <div className="fermi-error" role="alert" hidden={!props.error} ref={ref}>
      {props.error}
    </div>
  );
}
