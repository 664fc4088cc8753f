/**
 * Fermi (费米集群) for JupyterLab: "Submit as training job", the Fermi sidebar (jobs, models,
 * deployments) and the misuse guard.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { CommandToolbarButton, ICommandPalette, Notification } from '@jupyterlab/apputils';
import type { DocumentRegistry } from '@jupyterlab/docregistry';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import type { ReadonlyJSONObject } from '@lumino/coreutils';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import { MisuseGuard, SUBMIT_COMMAND } from './guard';
import { languageFor, makeT, TFunc } from './i18n';
import { fermiIcon, zapIcon } from './icons';
import { DEFAULT_SETTINGS, FermiModel, IFermiSettings } from './model';
import { FermiSidebar } from './sidebar';
import { showSubmitDialog } from './submit';
import { NEW_FROM_TEMPLATE_COMMAND, newFromTemplate } from './templates';

export const PLUGIN_ID = 'fermi-labextension:plugin';
export const OPEN_SIDEBAR_COMMAND = 'fermi:open-sidebar';
const SIDEBAR_ID = 'fermi-sidebar';
const NOTEBOOK_ITEM = '.jp-DirListing-item[data-file-type="notebook"]';

function readSettings(settings: ISettingRegistry.ISettings): IFermiSettings {
  const c = settings.composite as Partial<IFermiSettings>;
  return {
    misuseGuardSeconds: Number(c.misuseGuardSeconds ?? DEFAULT_SETTINGS.misuseGuardSeconds),
    misuseGuardGpuOnly: c.misuseGuardGpuOnly ?? DEFAULT_SETTINGS.misuseGuardGpuOnly,
    pollIntervalSeconds: Number(c.pollIntervalSeconds ?? DEFAULT_SETTINGS.pollIntervalSeconds),
    guideUrl: String(c.guideUrl || DEFAULT_SETTINGS.guideUrl)
  };
}

/** Adds the "Submit as training job" button to every notebook's toolbar. */
class SubmitButtonExtension implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(private readonly _app: JupyterFrontEnd) {}

  createNew(panel: NotebookPanel, context: DocumentRegistry.IContext<INotebookModel>): IDisposable {
    // The same args object is read at each click: keep its path up to date on renames.
    const args: { path: string; origin: string } = { path: context.path, origin: 'toolbar' };
    const onRename = (_: unknown, path: string) => {
      args.path = path;
    };
    context.pathChanged.connect(onRename);
    const button = new CommandToolbarButton({
      commands: this._app.commands,
      id: SUBMIT_COMMAND,
      args: args as unknown as ReadonlyJSONObject
    });
    button.addClass('fermi-submit-button');
    panel.toolbar.insertItem(10, 'fermi-submit-job', button);
    return new DisposableDelegate(() => {
      context.pathChanged.disconnect(onRename);
      button.dispose();
    });
  }
}

function notebookPathFromBrowser(factory: IFileBrowserFactory | null): string | null {
  const browser = factory?.tracker.currentWidget;
  if (!browser) {
    return null;
  }
  for (const item of browser.selectedItems()) {
    if (item.type === 'notebook' || item.path.endsWith('.ipynb')) {
      return item.path;
    }
  }
  return null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Fermi: submit notebooks as training jobs; jobs, models and deployments.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ITranslator, ISettingRegistry, ICommandPalette, IFileBrowserFactory, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    translator: ITranslator | null,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    browserFactory: IFileBrowserFactory | null,
    restorer: ILayoutRestorer | null
  ) => {
    const lab = translator ?? nullTranslator;
    const lang = languageFor(lab.languageCode);
    // the catalogue shared with the control plane and the CLI (fermi_extension/locale)
    const t: TFunc = makeT(lab.load('fermi'));
    const { commands } = app;
    const model = new FermiModel();

    const sidebar = new FermiSidebar({ t, model, commands });
    app.shell.add(sidebar, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(sidebar, SIDEBAR_ID);
    }

    const openSidebar = () => {
      app.shell.activateById(SIDEBAR_ID);
    };

    commands.addCommand(OPEN_SIDEBAR_COMMAND, {
      label: t('Open the Fermi sidebar'),
      caption: t('Fermi: training jobs, models and inference services'),
      icon: args => (args.isPalette ? undefined : fermiIcon),
      execute: () => openSidebar()
    });

    commands.addCommand(SUBMIT_COMMAND, {
      label: t('Submit as training job'),
      caption: t('Run this notebook as a batch training job on the cluster'),
      icon: args => (args.isPalette ? undefined : zapIcon),
      execute: async args => {
        let path = typeof args.path === 'string' && args.path ? args.path : null;
        const origin = typeof args.origin === 'string' ? args.origin : '';
        if (!path && origin === 'filebrowser') {
          path = notebookPathFromBrowser(browserFactory);
        }
        if (!path) {
          path = tracker.currentWidget?.context.path ?? null;
        }
        if (!path) {
          path = notebookPathFromBrowser(browserFactory);
        }
        if (!path || !path.endsWith('.ipynb')) {
          Notification.warning(t('Open or select a notebook (.ipynb) to submit it as a training job.'), { autoClose: 6000 });
          return;
        }
        const panel = tracker.find(p => p.context.path === path) ?? null;
        const dirty = !!panel && !!panel.context.model?.dirty;
        const result = await showSubmitDialog({
          path,
          t,
          dirty,
          save: panel ? () => panel.context.save() : undefined,
          reason: origin === 'guard' ? t('A cell has been running for a long time here: as a training job it runs in the background, is tracked, and frees the GPU when it ends.') : undefined
        });
        if (!result) {
          return;
        }
        if (result.kind === 'job') {
          const job = result.job;
          model.refresh();
          Notification.success(t('Training job "{name}" submitted ({id}).', { name: job.name, id: job.id }), {
            autoClose: 10000,
            actions: [
              {
                label: t('Open job'),
                displayType: 'accent',
                callback: () => {
                  openSidebar();
                  model.revealItem('jobs', job.id);
                }
              }
            ]
          });
        } else {
          const s = result.schedule;
          model.refresh();
          Notification.success(
            t('Schedule "{name}" created ({cron}); next run: {next}.', {
              name: s.name,
              cron: s.cron,
              next: s.next_run_at ? new Date(s.next_run_at).toLocaleString() : '—'
            }),
            {
              autoClose: 10000,
              actions: [{ label: t('Open the Fermi sidebar'), callback: () => openSidebar() }]
            }
          );
        }
      }
    });

    commands.addCommand(NEW_FROM_TEMPLATE_COMMAND, {
      label: t('New notebook from a Fermi template'),
      execute: args =>
        newFromTemplate({
          commands,
          t,
          lang,
          folder: browserFactory?.tracker.currentWidget?.model.path ?? '',
          name: typeof args.name === 'string' ? args.name : undefined
        })
    });
    // the dashboard's "new from template" links: /hub/user-redirect/lab?fermi-template=NAME
    const wanted = new URLSearchParams(window.location.search).get('fermi-template');
    if (wanted) {
      void app.restored.then(() => commands.execute(NEW_FROM_TEMPLATE_COMMAND, { name: wanted }));
    }

    app.docRegistry.addWidgetExtension('Notebook', new SubmitButtonExtension(app));

    app.contextMenu.addItem({
      command: NEW_FROM_TEMPLATE_COMMAND,
      selector: '.jp-DirListing-content',
      rank: 4
    });
    app.contextMenu.addItem({
      command: SUBMIT_COMMAND,
      selector: NOTEBOOK_ITEM,
      rank: 3,
      args: { origin: 'filebrowser' }
    });

    if (palette) {
      const category = 'Fermi';
      palette.addItem({ command: SUBMIT_COMMAND, category, args: { isPalette: true } });
      palette.addItem({ command: OPEN_SIDEBAR_COMMAND, category, args: { isPalette: true } });
      palette.addItem({ command: NEW_FROM_TEMPLATE_COMMAND, category, args: {} });
    }

    new MisuseGuard({ tracker, commands, model, t });

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => model.setSettings(readSettings(settings));
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('Fermi: settings not loaded, using defaults.', reason);
        });
    }
  }
};

export default plugin;
