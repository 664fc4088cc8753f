/** Typed calls to the Fermi routes of the dev server (`fermi/api/...`). */

import { requestAPI } from './request';
import type {
  ICatalog,
  ICreateDeployment,
  IDeployment,
  IEnvironment,
  IImage,
  IJob,
  IJobList,
  IJobLogs,
  IModel,
  IModelSummary,
  INotebookParameters,
  IPool,
  IProfile,
  ISchedule,
  ISubmitBody,
  ITemplate,
  IUpdateDeployment
} from './types';

const enc = encodeURIComponent;

export const api = {
  environment(): Promise<IEnvironment> {
    return requestAPI<IEnvironment>('environment');
  },

  parameters(path: string): Promise<INotebookParameters> {
    return requestAPI<INotebookParameters>('notebook/parameters', {
      method: 'POST',
      body: { path }
    });
  },

  /** Images and profiles offered to this user (readable by everyone, unlike `GET catalog`). */
  async catalog(): Promise<ICatalog> {
    const [images, profiles] = await Promise.all([
      requestAPI<{ images: IImage[] }>('catalog/images'),
      requestAPI<{ profiles: IProfile[]; pools?: IPool[] }>('catalog/profiles')
    ]);
    return {
      images: (images.images ?? []).filter(i => !i.hidden),
      profiles: profiles.profiles ?? [],
      pools: profiles.pools ?? []
    };
  },

  submitJob(body: ISubmitBody): Promise<IJob> {
    const { cron: _cron, ...job } = body;
    return requestAPI<IJob>('jobs', { method: 'POST', body: job });
  },

  createSchedule(body: ISubmitBody): Promise<ISchedule> {
    return requestAPI<ISchedule>('schedules', { method: 'POST', body });
  },

  listSchedules(): Promise<{ schedules: ISchedule[] }> {
    return requestAPI<{ schedules: ISchedule[] }>('schedules');
  },

  deleteSchedule(id: string): Promise<void> {
    return requestAPI<void>(`schedules/${enc(id)}`, { method: 'DELETE' });
  },

  listJobs(status?: string, limit = 50, offset = 0): Promise<IJobList> {
    return requestAPI<IJobList>('jobs', { query: { status, limit, offset } });
  },

  job(id: string): Promise<IJob> {
    return requestAPI<IJob>(`jobs/${enc(id)}`);
  },

  logs(id: string, offset = 0): Promise<IJobLogs> {
    return requestAPI<IJobLogs>(`jobs/${enc(id)}/logs`, { query: { offset } });
  },

  cancelJob(id: string): Promise<IJob> {
    return requestAPI<IJob>(`jobs/${enc(id)}/cancel`, { method: 'POST', body: {} });
  },

  retryJob(id: string): Promise<IJob> {
    return requestAPI<IJob>(`jobs/${enc(id)}/retry`, { method: 'POST', body: {} });
  },

  openOutput(id: string): Promise<{ path: string }> {
    return requestAPI<{ path: string }>(`jobs/${enc(id)}/output/open`, {
      method: 'POST',
      body: {}
    });
  },

  listModels(): Promise<{ models: IModelSummary[] }> {
    return requestAPI<{ models: IModelSummary[] }>('models');
  },

  model(name: string): Promise<IModel> {
    return requestAPI<IModel>(`models/${enc(name)}`);
  },

  listDeployments(): Promise<{ deployments: IDeployment[] }> {
    return requestAPI<{ deployments: IDeployment[] }>('deployments');
  },

  createDeployment(body: ICreateDeployment): Promise<IDeployment> {
    return requestAPI<IDeployment>('deployments', { method: 'POST', body });
  },

  deployment(name: string): Promise<IDeployment> {
    return requestAPI<IDeployment>(`deployments/${enc(name)}`);
  },

  patchDeployment(name: string, body: IUpdateDeployment): Promise<IDeployment> {
    return requestAPI<IDeployment>(`deployments/${enc(name)}`, { method: 'PATCH', body });
  },

  deleteDeployment(name: string): Promise<void> {
    return requestAPI<void>(`deployments/${enc(name)}`, { method: 'DELETE' });
  },

  templates(): Promise<{ templates: ITemplate[] }> {
    return requestAPI<{ templates: ITemplate[] }>('templates');
  },

  /** Copies a template into the user's files (never over a file); returns its path. */
  newFromTemplate(name: string, folder: string): Promise<{ path: string }> {
    return requestAPI<{ path: string }>('templates', { method: 'POST', body: { name, folder } });
  }
};
