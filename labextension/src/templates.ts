/**
 * "New from template" (模板市场): the notebook templates that ship with Fermi, copied into the
 * user's files (the dev server never overwrites) and opened. A link such as
 * `/hub/user-redirect/lab?fermi-template=NAME` (the dashboard's) creates one at once.
 */

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import { api } from './api';
import { describeTemplate } from './format';
import type { Lang, TFunc } from './i18n';
import { errorMessage } from './request';
import type { ITemplate } from './types';

export const NEW_FROM_TEMPLATE_COMMAND = 'fermi:new-from-template';

class TemplatePicker extends Widget {
  constructor(templates: ITemplate[], lang: Lang, t: TFunc) {
    super();
    this.addClass('fermi-template-picker');
    const label = document.createElement('label');
    label.textContent = t('Template');
    this._select = document.createElement('select');
    this._select.className = 'jp-mod-styled';
    this._select.dataset.fermiField = 'template';
    const text = document.createElement('p');
    text.className = 'fermi-hint';
    for (const template of templates) {
      const option = document.createElement('option');
      option.value = template.name;
      option.textContent = describeTemplate(template, lang).title;
      this._select.appendChild(option);
    }
    const show = () => {
      const chosen = templates.find(x => x.name === this._select.value);
      text.textContent = chosen ? describeTemplate(chosen, lang).text : '';
    };
    this._select.addEventListener('change', show);
    show();
    label.appendChild(this._select);
    this.node.append(label, text);
  }

  getValue(): string {
    return this._select.value;
  }

  private _select: HTMLSelectElement;
}

export async function newFromTemplate(options: {
  commands: CommandRegistry;
  t: TFunc;
  lang: Lang;
  folder: string;
  name?: string;
}): Promise<void> {
  const { commands, t, lang, folder } = options;
  try {
    const { templates } = await api.templates();
    let name = options.name;
    if (!name) {
      const picked = await showDialog({
        title: t('New from template'),
        body: new TemplatePicker(templates, lang, t),
        buttons: [Dialog.cancelButton({ label: t('Cancel') }),
          Dialog.okButton({ label: t('Create') })]
      });
      if (!picked.button.accept || !picked.value) {
        return;
      }
      name = picked.value;
    }
    const chosen = templates.find(x => x.name === name);
    const { path } = await api.newFromTemplate(name, folder);
    await commands.execute('docmanager:open', { path });
    Notification.success(
      t('Created {path} from the template "{title}".', { path, title: chosen ? describeTemplate(chosen, lang).title : name }),
      { autoClose: 6000 });
  } catch (error) {
    Notification.error(errorMessage(error), { autoClose: 10000 });
  }
}
