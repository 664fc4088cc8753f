import { ServerConnection } from '@jupyterlab/services';
import { describe, expect, it } from 'vitest';

import {
  FermiRequestError,
  fermiUrl,
  messageFromBody,
  readResponse,
  reportErrors,
  requestAPI
} from '../src/request';

type Call = { url: string; init: RequestInit };

function settingsFor(respond: (call: Call) => Response | Promise<Response>, calls: Call[] = []) {
  const fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    const call = {
      url: request.url,
      init: { method: request.method, body: request.body ? await request.text() : undefined }
    };
    calls.push(call);
    return respond(call);
  };
  return ServerConnection.makeSettings({
    baseUrl: 'http://localhost:8888/user/alice/',
    wsUrl: 'ws://localhost:8888/user/alice/',
    token: 'secret',
    fetch: fetch as typeof globalThis.fetch
  });
}

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

describe('requestAPI', () => {
  it('calls fermi/api under the base URL and returns the JSON', async () => {
    const calls: Call[] = [];
    const settings = settingsFor(() => json(200, { jobs: [], total: 0 }), calls);
    const answer = await requestAPI<{ total: number }>('jobs', {
      query: { status: 'running', limit: 50, offset: undefined },
      settings
    });
    expect(answer.total).toBe(0);
    // (JupyterLab appends a cache-busting timestamp to GET URLs)
    expect(calls[0].url).toMatch(
      /^http:\/\/localhost:8888\/user\/alice\/fermi\/api\/jobs\?status=running&limit=50(&\d+)?$/
    );
    expect(calls[0].init.method).toBe('GET');
  });

  it('sends JSON bodies', async () => {
    const calls: Call[] = [];
    const settings = settingsFor(() => json(201, { id: 'j1' }), calls);
    const job = await requestAPI<{ id: string }>('jobs', {
      method: 'POST',
      body: { path: 'train.ipynb', parameters: { C: 0.5 } },
      settings
    });
    expect(job.id).toBe('j1');
    expect(calls[0].init.method).toBe('POST');
    expect(JSON.parse(String(calls[0].init.body))).toEqual({
      path: 'train.ipynb',
      parameters: { C: 0.5 }
    });
  });

  it('throws the server message and status on 4xx', async () => {
    const settings = settingsFor(() =>
      json(400, { message: "Unknown profile 'gpu-huge'; choose one of: cpu, gpu-small." })
    );
    const error = await requestAPI('jobs', { method: 'POST', body: {}, settings }).catch(e => e);
    expect(error).toBeInstanceOf(FermiRequestError);
    expect(error.status).toBe(400);
    expect(error.message).toBe("Unknown profile 'gpu-huge'; choose one of: cpu, gpu-small.");
  });

  it('throws a readable message for non-JSON error bodies', async () => {
    const settings = settingsFor(
      () => new Response('Bad Gateway: upstream closed', { status: 502, statusText: 'Bad Gateway' })
    );
    const error = await requestAPI('models', { settings }).catch(e => e);
    expect(error).toBeInstanceOf(FermiRequestError);
    expect(error.status).toBe(502);
    expect(error.message).toBe('Bad Gateway: upstream closed');

    const html = settingsFor(
      () =>
        new Response('<html><title>404: Not Found</title><body>…</body></html>', {
          status: 404,
          statusText: 'Not Found'
        })
    );
    const notFound = await requestAPI('nope', { settings: html }).catch(e => e);
    expect(notFound.status).toBe(404);
    expect(notFound.message).toBe('404 404: Not Found');

    const empty = settingsFor(() => new Response('', { status: 500, statusText: 'Internal Server Error' }));
    const server = await requestAPI('jobs', { settings: empty }).catch(e => e);
    expect(server.status).toBe(500);
    expect(server.message).toBe('500 Internal Server Error');
  });

  it('returns undefined for 204 and status 0 when the server is unreachable', async () => {
    const settings = settingsFor(() => new Response(null, { status: 204 }));
    expect(await requestAPI('deployments/x', { method: 'DELETE', settings })).toBeUndefined();

    const down = settingsFor(() => {
      throw new TypeError('Failed to fetch');
    });
    const error = await requestAPI('jobs', { settings: down }).catch(e => e);
    expect(error).toBeInstanceOf(FermiRequestError);
    expect(error.status).toBe(0);
    expect(error.message).toContain('Failed to fetch');
  });
});

describe('helpers', () => {
  it('messageFromBody prefers message, then other fields, then text', () => {
    expect(messageFromBody(400, 'Bad Request', '{"message": " fix this "}')).toBe('fix this');
    expect(messageFromBody(403, 'Forbidden', '{"reason": "admins only"}')).toBe('admins only');
    expect(messageFromBody(400, 'Bad Request', '{"other": 1}')).toBe('{"other": 1}');
    expect(messageFromBody(500, '', '')).toBe('500 Error');
    expect(messageFromBody(500, 'Oops', 'x'.repeat(400)).length).toBeLessThan(310);
  });

  it('readResponse returns text for non-JSON success bodies', async () => {
    expect(await readResponse(new Response('plain', { status: 200 }))).toBe('plain');
  });

  it('fermiUrl joins and encodes the query', () => {
    expect(fermiUrl('http://h/base/', 'jobs/j1/logs', { offset: 0 })).toBe(
      'http://h/base/fermi/api/jobs/j1/logs?offset=0'
    );
    expect(fermiUrl('http://h/base', '/models', { q: 'a&b', empty: '' })).toBe(
      'http://h/base/fermi/api/models?q=a%26b'
    );
  });
});

describe('reportErrors', () => {
  it('is true when the action goes through, and shows nothing', async () => {
    const shown: string[] = [];
    expect(await reportErrors(async () => 'done', m => shown.push(m))).toBe(true);
    expect(shown).toEqual([]);
  });

  it('is false when the action fails, and shows its message', async () => {
    const shown: string[] = [];
    const ok = await reportErrors(async () => {
      throw new FermiRequestError(409, 'Name taken');
    }, m => shown.push(m));
    expect(ok).toBe(false);
    expect(shown).toEqual(['Name taken']);
  });
});
