import { describe, expect, it } from 'vitest';

import { describeTemplate } from '../src/format';

describe('describeTemplate', () => {
  const template = {
    name: 'tabular-classifier',
    file: 'tabular-classifier.ipynb',
    title: { en: 'Tabular classifier', zh: '表格分类器' },
    description: { en: 'Wine data', zh: '' }
  };

  it('speaks the UI language', () => {
    expect(describeTemplate(template, 'zh').title).toBe('表格分类器');
    expect(describeTemplate(template, 'en').title).toBe('Tabular classifier');
  });

  it('falls back to English, then to the file name', () => {
    expect(describeTemplate(template, 'zh').text).toBe('Wine data');
    expect(describeTemplate({ name: 'bare', file: 'bare.ipynb' }, 'zh')).toEqual({ title: 'bare', text: '' });
  });
});
