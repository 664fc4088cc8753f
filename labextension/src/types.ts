/**
 * Shapes of the Fermi API answers the extension reads (see the control plane's OpenAPI
 * document; only the fields used here are typed).
 */

export type ParamType = 'bool' | 'int' | 'float' | 'str' | 'list' | 'dict' | 'any';

export interface IParameter {
  name: string;
  type: ParamType | string;
  default?: unknown;
  help?: string;
}

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

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export const ACTIVE_JOB_STATUSES: ReadonlyArray<string> = ['queued', 'running'];

export interface IJobProgress {
  cells_total?: number | null;
  cells_done?: number | null;
  current_cell?: number | null;
}

export interface IJobEvent {
  at: string;
  kind: string;
  message: string;
}

export interface IJob {
  id: string;
  name: string;
  owner: string;
  status: JobStatus | string;
  reason?: string | null;
  priority: number;
  image: string;
  profile: string;
  notebook_name: string;
  parameters: Record<string, unknown>;
  attempt: number;
  retry_of?: string | null;
  created_at: string;
  started_at?: string | null;
  finished_at?: string | null;
  duration_seconds?: number | null;
  progress: IJobProgress;
  metrics: Record<string, number>;
  models?: { name: string; version: string }[];
  queue_position?: number | null;
  events?: IJobEvent[] | null;
}

export interface IJobList {
  jobs: IJob[];
  total: number;
  limit: number;
  offset: number;
}

export interface IJobLogs {
  text: string;
  offset: number;
  next_offset: number;
  complete: boolean;
}

export interface ISchedule {
  id: string;
  name: string;
  cron: string;
  next_run_at: string;
  image?: string | null;
  profile?: string | null;
  parameters?: Record<string, unknown>;
  last_job_id?: string | null;
  last_error?: string | null;
  runs?: number;
}

export interface IImageVersion {
  tag: string;
  digest?: string | null;
  labels?: Record<string, string>;
}

export interface IImage {
  slug: string;
  name: string;
  description?: string;
  kind?: string;
  versions?: IImageVersion[];
  featured?: boolean;
  hidden?: boolean;
  deprecated?: boolean;
  redirect_message?: string | null;
}

export interface IProfile {
  slug: string;
  name: string;
  description?: string;
  cpu?: number;
  memory?: string;
  gpu?: number;
  gpu_type?: string | null;
  pool?: string;
  price_per_hour?: number;
  default?: boolean;
  available?: boolean;
  unavailable_reason?: string | null;
}

export interface IPool {
  slug: string;
  name: string;
  gpus?: number;
  gpu_type?: string | null;
  max_running_jobs?: number;
}

export interface ICatalog {
  images: IImage[];
  profiles: IProfile[];
  pools: IPool[];
}

export interface IJobLineage {
  id: string;
  name: string;
  owner: string;
  notebook_name: string;
  parameters: Record<string, unknown>;
  metrics: Record<string, number>;
  image: string;
  profile: string;
  finished_at?: string | null;
  notebook_url?: string;
}

export interface IModelVersion {
  version: string;
  status: string;
  created_at: string;
  run_id?: string | null;
  job?: IJobLineage | null;
}

export interface IModelSummary {
  name: string;
  owner: string;
  groups: string[];
  latest_version?: string | null;
  updated_at?: string | null;
}

export interface IModel extends IModelSummary {
  versions: IModelVersion[];
}

export interface IRevision {
  name: string;
  version: string;
  traffic_percent: number;
  role: 'stable' | 'canary' | 'retired' | string;
  ready_replicas: number;
}

export interface IReplicaCount {
  at: string;
  replicas: number;
}

export interface IDeployment {
  name: string;
  owner: string;
  model: string;
  version: string;
  engine: string;
  profile: string;
  status: 'pending' | 'ready' | 'failed' | 'stopped' | string;
  reason?: string | null;
  url: string;
  min_replicas: number;
  max_replicas: number;
  target_concurrency: number;
  desired_replicas: number;
  replicas: { id: string; revision: string; state: string }[];
  revisions: IRevision[];
  traffic?: {
    requests?: number;
    errors?: number;
    in_flight?: number;
    latency_ms?: Record<string, number>;
  };
  events?: { at: string; kind: string; message: string }[] | null;
  replica_history?: IReplicaCount[] | null;
  created_at: string;
  api_key?: string | null;
}

export const ENGINES = ['auto', 'sklearn', 'mlflow', 'vllm'] as const;
export type Engine = (typeof ENGINES)[number];

export interface ICreateDeployment {
  name: string;
  model: string;
  version: string;
  profile?: string | null;
  engine: Engine;
  minReplicas: number;
  maxReplicas: number;
  scaleTarget: number;
}

export interface IUpdateDeployment {
  minReplicas?: number;
  maxReplicas?: number;
  scaleTarget?: number;
  canary?: { version: string; trafficPercent: number };
  action?: 'promote' | 'rollback' | 'stop' | 'start' | 'rotate-key';
}

export interface ISubmitBody {
  path: string;
  parameters: Record<string, unknown>;
  image?: string;
  image_version?: string;
  profile?: string;
  name?: string;
  priority: number;
  cron?: string;
}

/** A notebook template shipped with Fermi (`notebooks/templates/`), with its `fermi` metadata. */
export interface ITemplate {
  name: string;
  file: string;
  title?: { en?: string; zh?: string };
  description?: { en?: string; zh?: string };
  tags?: string[];
  profile?: string;
}
