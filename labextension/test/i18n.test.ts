import { describe, expect, it } from 'vitest';

import { en, languageFor, makeT, zh } from '../src/i18n';

describe('i18n tables', () => {
  it('have the same keys in English and Chinese', () => {
    expect(Object.keys(zh).sort()).toEqual(Object.keys(en).sort());
  });

  it('have no empty strings', () => {
    for (const [lang, table] of Object.entries({ en, zh })) {
      for (const [key, text] of Object.entries(table)) {
        expect(typeof text, `${lang}:${key}`).toBe('string');
        expect(text.trim(), `${lang}:${key}`).not.toBe('');
      }
    }
  });

  it('use the same placeholders in both languages', () => {
    const names = (s: string) => (s.match(/\{(\w+)\}/g) ?? []).sort();
    for (const key of Object.keys(en) as (keyof typeof en)[]) {
      expect(names(zh[key]), key).toEqual(names(en[key]));
    }
  });

  it('have Chinese text in the Chinese table', () => {
    expect(zh['command.submit']).toBe('提交为训练任务');
    expect(zh['submit.accept']).toBe('提交');
    expect(zh['deploy.accept']).toBe('部署');
    expect(en['command.submit']).toBe('Submit as training job');
    expect(en['submit.accept']).toBe('Submit');
    expect(en['deploy.accept']).toBe('Deploy');
  });

  it('pick Chinese for zh language codes only', () => {
    expect(languageFor('zh-CN')).toBe('zh');
    expect(languageFor('zh_TW')).toBe('zh');
    expect(languageFor('ZH')).toBe('zh');
    expect(languageFor('en')).toBe('en');
    expect(languageFor('fr-FR')).toBe('en');
    expect(languageFor(undefined)).toBe('en');
    expect(languageFor('')).toBe('en');
  });

  it('fill placeholders', () => {
    const t = makeT('en');
    expect(t('jobs.progress', { k: 2, n: 5 })).toBe('cell 2/5');
    expect(makeT('zh')('jobs.progress', { k: 2, n: 5 })).toBe('单元格 2/5');
    // JSON braces in messages are left alone
    expect(t('param.error.dict', { name: 'opts' })).toContain('{"key": 1}');
  });
});
