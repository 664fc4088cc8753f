/** Shared pieces of the dialogs and the sidebar: labelled fields, the replica fields, copy buttons. */

import { Clipboard } from '@jupyterlab/apputils';
import * as React from 'react';

import { IReplicaInput, profileLabel } from './format';
import type { TFunc } from './i18n';
import type { IProfile } from './types';

/** A `<label>`: its text, then its control (`fermi-narrow` for short numbers). */
export function Field(props: { label: string; narrow?: boolean; children: React.ReactNode }): JSX.Element {
  return (
    <label className={props.narrow ? 'fermi-narrow' : undefined}>
      {props.label}
      {props.children}
    </label>
  );
}

export interface IInputFieldProps {
  label: string;
  /** The `data-fermi-field` of the input. */
  field: string;
  value: string;
  onChange: (value: string) => void;
  type?: 'text' | 'number';
  step?: string;
  title?: string;
  placeholder?: string;
  list?: string;
  narrow?: boolean;
  /** After the input, in the label (e.g. its datalist). */
  children?: React.ReactNode;
}

/** A labelled `jp-mod-styled` input. */
export function InputField(props: IInputFieldProps): JSX.Element {
  const { label, field, onChange, narrow, children, ...attributes } = props;
  return (
    <Field label={label} narrow={narrow}>
      <input
        className="jp-mod-styled"
        {...attributes}
        data-fermi-field={field}
        onChange={e => onChange(e.currentTarget.value)}
      />
      {children}
    </Field>
  );
}

/** A narrow labelled number input. */
export function NumberField(props: Omit<IInputFieldProps, 'type' | 'narrow'>): JSX.Element {
  return <InputField {...props} type="number" narrow />;
}

export interface IOption {
  value: string;
  label: string;
  disabled?: boolean;
  title?: string;
}

/** A labelled `jp-mod-styled` select; `empty` is the one option shown when there are none. */
export function SelectField(props: {
  label: string;
  field: string;
  value: string;
  onChange: (value: string) => void;
  options: IOption[];
  empty?: string;
}): JSX.Element {
  const { options, empty } = props;
  return (
    <Field label={props.label}>
      <select
        className="jp-mod-styled"
        data-fermi-field={props.field}
        value={props.value}
        onChange={e => props.onChange(e.currentTarget.value)}
      >
        {options.length === 0 && empty !== undefined && <option value="">{empty}</option>}
        {options.map(o => (
          <option key={o.value} value={o.value} disabled={o.disabled} title={o.title}>
            {o.label}
          </option>
        ))}
      </select>
    </Field>
  );
}

/** The profile select's options (unavailable ones disabled; with `described`, a tooltip). */
export function profileOptions(profiles: IProfile[], t: TFunc, described = false): IOption[] {
  return profiles.map(p => ({
    value: p.slug,
    label: profileLabel(p, t),
    disabled: p.available === false,
    title: described ? p.unavailable_reason || p.description || undefined : undefined
  }));
}

/** Min and max replicas and the target concurrency, with their hint (deploy and scale dialogs). */
export function ReplicaFields(props: {
  t: TFunc;
  value: IReplicaInput;
  onChange: React.Dispatch<React.SetStateAction<IReplicaInput>>;
}): JSX.Element {
  const { t, value, onChange } = props;
  const set = (key: keyof IReplicaInput) => (text: string) => onChange(old => ({ ...old, [key]: text }));
  return (
    <>
      <div className="fermi-row">
        <NumberField label={t('Min replicas')} field="min_replicas" value={value.min} onChange={set('min')} />
        <NumberField label={t('Max replicas')} field="max_replicas" value={value.max} onChange={set('max')} />
        <NumberField
          label={t('Target concurrency')}
          field="target"
          step="any"
          value={value.target}
          onChange={set('target')}
        />
      </div>
      <div className="fermi-hint">{t('Replicas 1–16; the autoscaler aims at the target number of in-flight requests per replica.')}</div>
    </>
  );
}

/** Copy to the clipboard: synchronously (JupyterLab's way), and with the async API too. */
export function copyText(text: string): void {
  Clipboard.copyToSystem(text);
  try {
    void navigator.clipboard?.writeText(text).catch(() => undefined);
  } catch {
    // no async clipboard here: the synchronous copy did it
  }
}

/** A Copy button that says Copied for a moment. */
export function CopyButton(props: {
  t: TFunc;
  text: string;
  action: string;
  className?: string;
  title?: string;
}): JSX.Element {
  const { t, text } = props;
  const [copied, setCopied] = React.useState(false);
  return (
    <button
      className={props.className ?? 'jp-Button jp-mod-minimal'}
      data-fermi-action={props.action}
      title={props.title}
      onClick={() => {
        copyText(text);
        setCopied(true);
        window.setTimeout(() => setCopied(false), 1500);
      }}
    >
      {copied ? t('Copied') : t('Copy')}
    </button>
  );
}
