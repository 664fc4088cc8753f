/**
 * The misuse guard: in a dev environment, a cell that runs longer than `misuseGuardSeconds`
 * (on a GPU profile, unless `misuseGuardGpuOnly` is off) gets a quiet hint offering to submit
 * the notebook as a training job. Once per cell execution, and once at a time per notebook.
 */

import { Notification } from '@jupyterlab/apputils';
import type { Cell } from '@jupyterlab/cells';
import { INotebookTracker, Notebook, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import type { CommandRegistry } from '@lumino/commands';

import { api } from './api';
import type { TFunc } from './i18n';
import type { FermiModel } from './model';
import type { IEnvironment } from './types';

export const SUBMIT_COMMAND = 'fermi:submit-job';

export class MisuseGuard {
  constructor(
    private readonly _options: {
      tracker: INotebookTracker;
      commands: CommandRegistry;
      model: FermiModel;
      t: TFunc;
    }
  ) {
    NotebookActions.executionScheduled.connect(this._onScheduled, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    api
      .environment()
      .then(env => (this._env = env))
      .catch(() => (this._env = null));
  }

  dispose(): void {
    NotebookActions.executionScheduled.disconnect(this._onScheduled, this);
    NotebookActions.executed.disconnect(this._onExecuted, this);
    for (const entry of this._timers.values()) {
      window.clearTimeout(entry.timer);
    }
    this._timers.clear();
  }

  /** Whether the guard applies to this dev server (GPU profile, or any with the setting off). */
  applies(): boolean {
    const { settings } = this._options.model;
    if (!(settings.misuseGuardSeconds > 0)) {
      return false;
    }
    if (!settings.misuseGuardGpuOnly) {
      return true;
    }
    return !!this._env && this._env.gpus > 0;
  }

  private _onScheduled(_: unknown, args: { notebook: Notebook; cell: Cell }): void {
    const { cell, notebook } = args;
    if (cell.model.type !== 'code') {
      return;
    }
    this._clear(cell);
    const seconds = this._options.model.settings.misuseGuardSeconds;
    if (!(seconds > 0)) {
      return;
    }
    const timer = window.setTimeout(() => {
      this._timers.delete(cell);
      if (cell.isDisposed || notebook.isDisposed) {
        return;
      }
      const running = (cell.model as { executionState?: string }).executionState;
      if (running !== undefined && running !== 'running') {
        return;
      }
      if (!this.applies() || this._hinted.has(notebook)) {
        return;
      }
      this._hint(notebook, seconds);
    }, seconds * 1000);
    this._timers.set(cell, { timer, notebook });
  }

  private _onExecuted(_: unknown, args: { notebook: Notebook; cell: Cell }): void {
    this._clear(args.cell);
    // The notebook may be hinted again once none of its cells is waiting on a timer.
    const { notebook } = args;
    if (!Array.from(this._timers.values()).some(e => e.notebook === notebook)) {
      this._hinted.delete(notebook);
    }
  }

  private _clear(cell: Cell): void {
    const entry = this._timers.get(cell);
    if (entry !== undefined) {
      window.clearTimeout(entry.timer);
      this._timers.delete(cell);
    }
  }

  private _hint(notebook: Notebook, seconds: number): void {
    const { tracker, commands, t } = this._options;
    const panel = tracker.find(p => p.content === notebook) as NotebookPanel | undefined;
    if (!panel) {
      return;
    }
    const path = panel.context.path;
    this._hinted.add(notebook);
    const minutes = Math.max(1, Math.round(seconds / 60));
    Notification.info(
      t('{name}: a cell has run for over {duration} in this dev environment. Long runs cost less, and are tracked, as a training job.', {
        name: path.split('/').pop() ?? path,
        duration: seconds < 120 ? t('{n} s', { n: seconds }) : t('{n} min', { n: minutes })
      }),
      {
        autoClose: 30000,
        actions: [
          {
            label: t('Submit as training job'),
            caption: t('Open the submit dialog for this notebook'),
            displayType: 'accent',
            callback: () => {
              void commands.execute(SUBMIT_COMMAND, { path, origin: 'guard' });
            }
          }
        ]
      }
    );
  }

  private _env: IEnvironment | null | undefined = undefined;
  private _timers = new Map<Cell, { timer: number; notebook: Notebook }>();
  private _hinted = new WeakSet<Notebook>();
}
