/**
 * Fermi's strings go through JupyterLab's translator, domain "fermi": the same message
 * catalogue as the control plane's pages, the CLI and the widgets
 * (fermi_extension/locale/<locale>/LC_MESSAGES/fermi.po; the lab reads the fermi.json generated
 * from it, registered by the Python package's `jupyterlab.locale` entry point). msgids are the
 * English text; `{name}` placeholders are filled after translation, so a translation may move
 * them. Guide-card traits are separated by "|". No JupyterLab imports, so tests run without a lab.
 */

/** What `translator.load('fermi')` returns, as far as Fermi uses it. */
export interface IBundle {
  __(msgid: string, ...args: unknown[]): string;
}

/** The language of the template titles (the templates carry English and Chinese titles). */
export type Lang = 'en' | 'zh';

/** The templates' language for a JupyterLab language code: Chinese when it starts with "zh". */
export function languageFor(code: string | null | undefined): Lang {
  return (code ?? '').toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

/** Marks a msgid for extraction where it is translated later (tables of constants). */
export function N_(msgid: string): string {
  return msgid;
}

export type TFunc = (msgid: string, vars?: Record<string, string | number>) => string;

/** `t(msgid, vars)`: the msgid through the bundle's `__`, then its `{name}` placeholders filled.
 * Without a bundle, English. */
export function makeT(bundle?: IBundle): TFunc {
  return (msgid, vars) => {
    const text = bundle ? bundle.__(msgid) : msgid;
    if (!vars) {
      return text;
    }
    return text.replace(/\{(\w+)\}/g, (match, name: string) =>
      name in vars ? String(vars[name]) : match
    );
  };
}
