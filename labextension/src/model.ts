/**
 * The sidebar's shared state outside React: settings, requests to reveal a job, a model or a
 * deployment, refresh requests and the API keys of deployments created in this session.
 */

export interface IFermiSettings {
  misuseGuardSeconds: number;
  misuseGuardGpuOnly: boolean;
  pollIntervalSeconds: number;
  guideUrl: string;
}

export const DEFAULT_SETTINGS: IFermiSettings = {
  misuseGuardSeconds: 600,
  misuseGuardGpuOnly: true,
  pollIntervalSeconds: 2,
  guideUrl: '/services/fermi/guide'
};

export type SectionId = 'jobs' | 'models' | 'deployments';

export interface IReveal {
  section: SectionId;
  key: string;
  nonce: number;
}

export class FermiModel {
  settings: IFermiSettings = { ...DEFAULT_SETTINGS };
  /** Bumped to make every section load again. */
  refreshNonce = 0;
  /** Bumped when a job ends (it may have registered a model version). */
  jobsEndedNonce = 0;
  /** The last reveal request. */
  reveal: IReveal | null = null;
  /** Whether the sidebar is shown (slower polling when not). */
  visible = false;
  /** API keys of deployments created in this session (shown once by the server). */
  readonly apiKeys = new Map<string, string>();

  subscribe(listener: () => void): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  setSettings(settings: Partial<IFermiSettings>): void {
    this.settings = { ...this.settings, ...settings };
    this._emit();
  }

  setVisible(visible: boolean): void {
    if (visible !== this.visible) {
      this.visible = visible;
      if (visible) {
        this.refreshNonce++;
      }
      this._emit();
    }
  }

  refresh(): void {
    this.refreshNonce++;
    this._emit();
  }

  jobsEnded(): void {
    this.jobsEndedNonce++;
    this._emit();
  }

  revealItem(section: SectionId, key: string): void {
    this.reveal = { section, key, nonce: (this.reveal?.nonce ?? 0) + 1 };
    this.refreshNonce++;
    this._emit();
  }

  /** Poll delay in ms: `fast` while something is in progress, slower otherwise/hidden. */
  pollDelay(fast: boolean): number {
    const base = Math.max(0.5, Number(this.settings.pollIntervalSeconds) || 2) * 1000;
    if (!this.visible) {
      return Math.max(base * 5, 15000);
    }
    return fast ? base : Math.max(base * 5, 10000);
  }

  private _emit(): void {
    for (const listener of Array.from(this._listeners)) {
      try {
        listener();
      } catch (error) {
        console.error('Fermi: listener failed', error);
      }
    }
  }

  private _listeners = new Set<() => void>();
}
