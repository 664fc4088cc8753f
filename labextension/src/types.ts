/**
 * Shapes of the Fermi API answers the extension reads.
 *
 * The control plane's shapes come from `api-types.ts`, which is generated from its OpenAPI
 * document (`jlpm build:api-types`; `tests/test_api_types.py` fails when it is stale), so they
 * cannot drift from the pydantic models. This file only gives them the names the rest of the
 * extension uses, and types the few routes that exist only on the dev server.
 */

import type { components } from './api-types';

type Schemas = components['schemas'];

export type ParamType = 'bool' | 'int' | 'float' | 'str' | 'list' | 'dict' | 'any';

export type IParameter = Schemas['Parameter'];

export type JobStatus = Schemas['DescribeJob']['status'];

export const ACTIVE_JOB_STATUSES: ReadonlyArray<string> = [
  'queued',
  'running'
] satisfies JobStatus[];

export type IJobProgress = Schemas['JobProgress'];
export type IJobEvent = Schemas['JobEventOut'];
export type IJob = Schemas['DescribeJob'];
export type IJobList = Schemas['ListJobsResponse'];
export type IJobLogs = Schemas['JobLogs'];
export type ISchedule = Schemas['DescribeSchedule'];

export type IImageVersion = Schemas['ImageVersion'];
export type IImage = Schemas['ImageItem'];
export type IProfile = Schemas['ProfileOut'];
export type IPool = Schemas['PoolItem'];

/** What the submit form offers: the catalogue as this user may use it. */
export interface ICatalog {
  images: IImage[];
  profiles: IProfile[];
  pools: IPool[];
}

export type IJobLineage = Schemas['JobLineage'];
export type IModelVersion = Schemas['ModelVersionOut'];
export type IModelSummary = Schemas['ModelSummary'];
export type IModel = Schemas['DescribeModel'];

export type IRevision = Schemas['RevisionOut'];
export type IReplicaCount = Schemas['ReplicaCount'];
export type IDeployment = Schemas['DescribeDeployment'];

export type Engine = NonNullable<Schemas['CreateDeployment']['engine']>;
export const ENGINES = ['auto', 'sklearn', 'mlflow', 'vllm'] as const satisfies readonly Engine[];

export type ICreateDeployment = Schemas['CreateDeployment'];
export type IUpdateDeployment = Schemas['UpdateDeployment'];

// The routes below belong to the dev server alone (they read the user's files and kernel), so
// the control plane's OpenAPI document does not describe them.

export interface IEnvironment {
  user: string;
  profile: string | null;
  image: string | null;
  image_version: string | null;
  gpus: number;
  price_per_hour: number | null;
}

export interface INotebookParameters {
  path: string;
  parameters: IParameter[];
}

/** `POST fermi/api/jobs`: the control plane's job, with the notebook named by its path. */
export type ISubmitBody = Omit<Schemas['CreateJob'], 'notebook'> & {
  path: string;
  cron?: string;
};

/** A notebook template shipped with Fermi (`notebooks/templates/`), with its `fermi` metadata. */
export interface ITemplate {
  name: string;
  file: string;
  title?: { en?: string; zh?: string };
  description?: { en?: string; zh?: string };
  tags?: string[];
  profile?: string;
}
