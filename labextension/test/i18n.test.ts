import { describe, expect, it } from 'vitest';

import { languageFor, makeT, N_ } from '../src/i18n';
import { chinese } from './catalogue';

describe('i18n through the translator', () => {
  it('is English without a translator, Chinese with the Chinese catalogue', () => {
    expect(makeT()('Submit as training job')).toBe('Submit as training job');
    expect(makeT(chinese)('Submit as training job')).toBe('提交为训练任务');
    expect(makeT(chinese)('Submit')).toBe('提交');
    expect(makeT(chinese)('Deploy')).toBe('部署');
  });

  it('falls back to the English msgid when a message has no translation', () => {
    expect(makeT(chinese)('not in the catalogue {x}', { x: 1 })).toBe('not in the catalogue 1');
  });

  it('picks the Chinese template titles for zh language codes only', () => {
    expect(languageFor('zh-CN')).toBe('zh');
    expect(languageFor('zh_TW')).toBe('zh');
    expect(languageFor('ZH')).toBe('zh');
    expect(languageFor('en')).toBe('en');
    expect(languageFor('fr-FR')).toBe('en');
    expect(languageFor(undefined)).toBe('en');
    expect(languageFor('')).toBe('en');
  });

  it('fills placeholders after translation', () => {
    const t = makeT();
    expect(t('cell {k}/{n}', { k: 2, n: 5 })).toBe('cell 2/5');
    expect(makeT(chinese)('cell {k}/{n}', { k: 2, n: 5 })).toBe('单元格 2/5');
    // JSON braces in messages are left alone
    expect(t('Parameter "{name}" must be a JSON object, e.g. {"key": 1}.', { name: 'opts' }))
      .toContain('{"key": 1}');
    expect(N_('Dev environment')).toBe('Dev environment');
  });
});
