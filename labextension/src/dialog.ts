/**
 * A Dialog whose accept button runs an async action first and only closes when it succeeds:
 * a 4xx answer is shown in the dialog and nothing closes.
 */

import { Dialog, ReactWidget } from '@jupyterlab/apputils';

import type { TFunc } from './i18n';

export interface IAsyncDialogOptions<T> extends Partial<Dialog.IOptions<T>> {
  /** Runs when an accept button is pressed (or Enter); resolve true to close the dialog. */
  onAccept: () => Promise<boolean>;
}

export class AsyncDialog<T> extends Dialog<T> {
  constructor(options: IAsyncDialogOptions<T>) {
    super(options);
    this._onAccept = options.onAccept;
    this._buttonList = options.buttons ?? [Dialog.cancelButton(), Dialog.okButton()];
    this._defaultIndex = options.defaultButton ?? this._buttonList.length - 1;
  }

  resolve(index?: number): void {
    const i = index ?? this._defaultIndex;
    const button = this._buttonList[i];
    if (!button || !button.accept) {
      super.resolve(i);
      return;
    }
    if (this._busy) {
      return;
    }
    this._busy = true;
    this.addClass('fermi-mod-busy');
    this._onAccept()
      .then(ok => {
        this._busy = false;
        this.removeClass('fermi-mod-busy');
        if (ok && !this.isDisposed) {
          super.resolve(i);
        }
      })
      .catch(error => {
        this._busy = false;
        this.removeClass('fermi-mod-busy');
        console.error('Fermi: dialog action failed', error);
      });
  }

  private _onAccept: () => Promise<boolean>;
  private _buttonList: ReadonlyArray<Dialog.IButton>;
  private _defaultIndex: number;
  private _busy = false;
}

/** What a form gives its dialog: the accept action, and the value it made. */
export class FormController<T> {
  submit: () => Promise<boolean> = async () => false;
  result: T | null = null;
}

class FormBody<T> extends ReactWidget {
  constructor(
    private readonly _render: (controller: FormController<T>) => JSX.Element,
    className: string
  ) {
    super();
    this.addClass(className);
  }

  readonly controller = new FormController<T>();

  getValue(): T | null {
    return this.controller.result;
  }

  render(): JSX.Element {
    return this._render(this.controller);
  }
}

export interface IFormDialogOptions<T> {
  title: string;
  /** The accept button's label. */
  accept: string;
  /** The dialog's class (it also gets `fermi-dialog`). */
  className: string;
  /** The body's class (default: the dialog's, with `-body`). */
  bodyClassName?: string;
  /** The form; it sets the controller's `submit`. */
  render: (controller: FormController<T>) => JSX.Element;
  /** A selector of the node to focus, in the body. */
  focus?: string;
}

/** A Cancel/accept dialog around a form; resolves with the form's value, or null when cancelled. */
export async function runFormDialog<T>(t: TFunc, options: IFormDialogOptions<T>): Promise<T | null> {
  const body = new FormBody<T>(options.render, options.bodyClassName ?? `${options.className}-body`);
  const dialog = new AsyncDialog<T | null>({
    title: options.title,
    body,
    buttons: [Dialog.cancelButton({ label: t('Cancel') }), Dialog.okButton({ label: options.accept })],
    defaultButton: 1,
    focusNodeSelector: options.focus,
    onAccept: () => body.controller.submit()
  });
  dialog.addClass(options.className);
  dialog.addClass('fermi-dialog');
  const result = await dialog.launch();
  return result.button.accept ? result.value : null;
}
