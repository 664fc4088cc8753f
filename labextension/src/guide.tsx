/** Guide cards: what a module is for, its traits and billing, and when to use another. */

import * as React from 'react';

import type { MessageKey, TFunc } from './i18n';

export type GuideKind = 'dev' | 'training' | 'models' | 'inference' | 'images';

const KEYS: Record<GuideKind, { title: MessageKey; what: MessageKey; traits: MessageKey; billing: MessageKey; instead: MessageKey }> = {
  dev: {
    title: 'guide.dev.title',
    what: 'guide.dev.what',
    traits: 'guide.dev.traits',
    billing: 'guide.dev.billing',
    instead: 'guide.dev.instead'
  },
  training: {
    title: 'guide.training.title',
    what: 'guide.training.what',
    traits: 'guide.training.traits',
    billing: 'guide.training.billing',
    instead: 'guide.training.instead'
  },
  models: {
    title: 'guide.models.title',
    what: 'guide.models.what',
    traits: 'guide.models.traits',
    billing: 'guide.models.billing',
    instead: 'guide.models.instead'
  },
  inference: {
    title: 'guide.inference.title',
    what: 'guide.inference.what',
    traits: 'guide.inference.traits',
    billing: 'guide.inference.billing',
    instead: 'guide.inference.instead'
  },
  images: {
    title: 'guide.images.title',
    what: 'guide.images.what',
    traits: 'guide.images.traits',
    billing: 'guide.images.billing',
    instead: 'guide.images.instead'
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
          title={collapsed ? t('guide.show') : t('guide.hide')}
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
            <b>{t('guide.billing')}</b> {t(keys.billing)}
          </div>
          <div className="fermi-card-instead">
            <b>{t('guide.instead')}</b> {t(keys.instead)}
          </div>
        </>
      )}
      <a className="fermi-card-link" href={guideUrl} target="_blank" rel="noopener noreferrer">
        {t('guide.link')}
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
