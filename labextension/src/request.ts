/**
 * The typed request helper for the dev server's `fermi/api/...` routes.
 *
 * Requests go through `ServerConnection.makeRequest`, so the token and the XSRF cookie are
 * handled as for any JupyterLab call. Errors come back from the server as
 * `{"message": "sentence saying what to fix"}` with a 4xx/5xx status; they are thrown as a
 * `FermiRequestError` carrying that `status` and `message`.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** An error answer of the Fermi API (or no answer: status 0). */
export class FermiRequestError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = 'FermiRequestError';
    this.status = status;
  }
}

/** The message of any error, for showing to the user. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}

/**
 * The user-facing message of an error answer: the body's `message` when the body is JSON with
 * one, else the body's text (shortened), else the status line.
 */
/**
 * Runs a form's request: true when it went through, false (its message shown through
 * `setError`) when it failed.
 */
export async function reportErrors(
  action: () => Promise<unknown>,
  setError: (message: string) => void
): Promise<boolean> {
  try {
    await action();
    return true;
  } catch (e) {
    setError(errorMessage(e));
    return false;
  }
}

export function messageFromBody(status: number, statusText: string, text: string): string {
  const trimmed = text.trim();
  if (trimmed) {
    try {
      const data = JSON.parse(trimmed);
      if (data && typeof data === 'object') {
        for (const key of ['message', 'reason', 'detail', 'error']) {
          const value = (data as Record<string, unknown>)[key];
          if (typeof value === 'string' && value.trim()) {
            return value.trim();
          }
        }
      }
    } catch {
      // not JSON: fall through to the text itself
    }
    if (!trimmed.startsWith('<')) {
      return trimmed.length > 300 ? trimmed.slice(0, 300) + '…' : trimmed;
    }
    // An HTML error page: its <title> says most.
    const title = /<title>([^<]*)<\/title>/i.exec(trimmed);
    if (title && title[1].trim()) {
      return `${status} ${title[1].trim()}`;
    }
  }
  return `${status} ${statusText || 'Error'}`.trim();
}

/** Read a response: the JSON (or text, or undefined when empty), or throw its error. */
export async function readResponse<T>(response: Response): Promise<T> {
  let text = '';
  try {
    text = await response.text();
  } catch {
    text = '';
  }
  if (!response.ok) {
    throw new FermiRequestError(
      response.status,
      messageFromBody(response.status, response.statusText, text)
    );
  }
  if (!text) {
    return undefined as T;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    return text as unknown as T;
  }
}

/** The URL of a Fermi route on the dev server, with query parameters (empty ones dropped). */
export function fermiUrl(
  baseUrl: string,
  endPoint: string,
  query?: Record<string, string | number | undefined | null>
): string {
  let url = URLExt.join(baseUrl, 'fermi/api', endPoint);
  if (query) {
    const entries = Object.entries(query).filter(
      ([, v]) => v !== undefined && v !== null && v !== ''
    );
    if (entries.length) {
      url +=
        '?' +
        entries
          .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
          .join('&');
    }
  }
  return url;
}

export interface IRequestOptions {
  method?: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  body?: unknown;
  query?: Record<string, string | number | undefined | null>;
  settings?: ServerConnection.ISettings;
}

/**
 * Call a route under `fermi/api/` and return its JSON answer.
 * Throws `FermiRequestError` with the server's `status` and `message` on error answers,
 * and with status 0 when the server could not be reached.
 */
export async function requestAPI<T = unknown>(
  endPoint: string,
  options: IRequestOptions = {}
): Promise<T> {
  const settings = options.settings ?? ServerConnection.makeSettings();
  const url = fermiUrl(settings.baseUrl, endPoint, options.query);
  const init: RequestInit = { method: options.method ?? 'GET' };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new FermiRequestError(0, errorMessage(error));
  }
  return readResponse<T>(response);
}
