import { describe, expect, it } from 'vitest';

import {
  buildSubmitBody,
  clampPriority,
  costEstimate,
  cronError,
  curlSnippet,
  deploymentNameFrom,
  formatDuration,
  intIn,
  isDeploymentName,
  jobNameFromPath,
  parseReplicas,
  progressText,
  pythonSnippet,
  sparklinePoints,
  toggled
} from '../src/format';
import { makeT } from '../src/i18n';

const t = makeT();

describe('submit body', () => {
  const form = {
    path: 'dir/train.ipynb',
    parameters: { C: 0.5 },
    name: ' my job ',
    image: 'scipy',
    imageVersion: '2024.1',
    profile: 'gpu-small',
    priority: '5',
    schedule: ''
  };

  it('is the jobs body without a schedule', () => {
    expect(buildSubmitBody(form)).toEqual({
      path: 'dir/train.ipynb',
      parameters: { C: 0.5 },
      name: 'my job',
      image: 'scipy',
      profile: 'gpu-small',
      priority: 5
    });
  });

  it('carries cron (normalised) for schedules and the version only when asked', () => {
    const body = buildSubmitBody(
      { ...form, schedule: ' 0  3 * * * ' },
      { includeImageVersion: true }
    );
    expect(body.cron).toBe('0 3 * * *');
    expect(body.image_version).toBe('2024.1');
  });

  it('clamps priority', () => {
    expect(clampPriority('500')).toBe(100);
    expect(clampPriority(-101)).toBe(-100);
    expect(clampPriority('x')).toBe(0);
  });
});

describe('cron', () => {
  it('accepts 5-field expressions and empty', () => {
    for (const cron of ['', '0 3 * * *', '*/15 * * * *', '0 0 1,15 * MON-FRI', '5 4 * * sun']) {
      expect(cronError(cron, t), cron).toBeNull();
    }
  });

  it('rejects others with a message', () => {
    for (const cron of ['daily', '0 3 * *', '0 3 * * * *', '0 3 * * $']) {
      expect(cronError(cron, t), cron).toContain('cron');
    }
  });
});

describe('texts', () => {
  it('shows cell progress', () => {
    expect(progressText({ cells_total: 7, cells_done: 2, current_cell: 3 }, t)).toBe('cell 3/7');
    expect(progressText({ cells_total: null }, t)).toBe('');
  });

  it('estimates cost from the profile price', () => {
    expect(costEstimate({ slug: 'g', name: 'GPU', price_per_hour: 2.5 }, t)).toContain('2.50 / h');
    expect(costEstimate({ slug: 'c', name: 'CPU', price_per_hour: 0 }, t)).toContain('free');
    expect(costEstimate(undefined, t)).toContain('profile');
  });

  it('names jobs and deployments', () => {
    expect(jobNameFromPath('a/b/Train Model.ipynb')).toBe('Train Model');
    expect(deploymentNameFrom('Wine_Classifier v2')).toBe('wine-classifier-v2');
    expect(deploymentNameFrom('---')).toBe('model');
    expect(isDeploymentName('wine-1')).toBe(true);
    expect(isDeploymentName('-wine')).toBe(false);
    expect(isDeploymentName('Wine')).toBe(false);
    expect(isDeploymentName('a'.repeat(41))).toBe(false);
    expect(isDeploymentName(deploymentNameFrom('x'.repeat(60)))).toBe(true);
  });

  it('formats durations', () => {
    expect(formatDuration(5)).toBe('5 s');
    expect(formatDuration(125)).toBe('2 min 5 s');
    expect(formatDuration(3720)).toBe('1 h 2 min');
    expect(formatDuration(null)).toBe('');
  });

  it('makes API snippets for the V2 protocol', () => {
    const d = { url: 'http://127.0.0.1:8001/wine/', model: 'wine-classifier' };
    expect(curlSnippet(d)).toContain('http://127.0.0.1:8001/wine/v2/models/wine-classifier/infer');
    expect(curlSnippet(d)).toContain('Authorization: Bearer $FERMI_API_KEY');
    expect(pythonSnippet(d)).toContain('requests.post(');
    expect(pythonSnippet(d)).toContain('/wine/v2/models/wine-classifier/infer');
  });

  it('draws the replica sparkline as a step line', () => {
    expect(sparklinePoints([], 100, 20)).toBe('');
    const now = Date.parse('2026-01-01T00:10:00Z');
    const points = sparklinePoints(
      [
        { at: '2026-01-01T00:00:00Z', replicas: 1 },
        { at: '2026-01-01T00:05:00Z', replicas: 3 }
      ],
      100,
      20,
      now
    ).split(' ');
    expect(points[0]).toBe('0.0,13.0');
    expect(points[1]).toBe('50.0,13.0');
    expect(points[2]).toBe('50.0,1.0');
    expect(points[points.length - 1]).toBe('100.0,1.0');
  });
});

describe('replica fields', () => {
  it('reads whole numbers in a range', () => {
    expect(intIn('3', 1, 16)).toBe(3);
    expect(intIn('0', 1, 16)).toBeNull();
    expect(intIn('17', 1, 16)).toBeNull();
    expect(intIn('1.5', 1, 16)).toBeNull();
    expect(intIn('abc', 0, 100)).toBeNull();
  });

  it('parses valid replica settings', () => {
    expect(parseReplicas({ min: '1', max: '4', target: '2.5' }, t)).toEqual({
      minReplicas: 1,
      maxReplicas: 4,
      scaleTarget: 2.5
    });
  });

  it('rejects bad replicas before a bad target', () => {
    expect(parseReplicas({ min: '3', max: '2', target: '0' }, t)).toBe(t('Replicas must be whole numbers from 1 to 16, with min ≤ max.'));
    expect(parseReplicas({ min: '0', max: '2', target: '4' }, t)).toBe(t('Replicas must be whole numbers from 1 to 16, with min ≤ max.'));
    expect(parseReplicas({ min: '1', max: '', target: '4' }, t)).toBe(t('Replicas must be whole numbers from 1 to 16, with min ≤ max.'));
    expect(parseReplicas({ min: '1', max: '2', target: '0' }, t)).toBe(t('Target concurrency must be a number above 0 and at most 1000.'));
    expect(parseReplicas({ min: '1', max: '2', target: '1001' }, t)).toBe(t('Target concurrency must be a number above 0 and at most 1000.'));
    expect(parseReplicas({ min: '1', max: '2', target: 'x' }, t)).toBe(t('Target concurrency must be a number above 0 and at most 1000.'));
  });
});

describe('toggled', () => {
  it('adds a missing key and removes a present one, leaving the input alone', () => {
    const start = new Set(['a']);
    expect([...toggled(start, 'b')].sort()).toEqual(['a', 'b']);
    expect([...toggled(start, 'a')]).toEqual([]);
    expect([...start]).toEqual(['a']);
  });
});
