import { describe, expect, it } from 'vitest';

import { makeT } from '../src/i18n';
import { chinese } from './catalogue';
import { initialInputs, inputKind, parseAll, parseParam, toInput } from '../src/params';
import type { IParameter } from '../src/types';

const p = (name: string, type: string, def?: unknown): IParameter => ({
  name,
  type,
  default: def,
  help: ''
});

describe('inputKind', () => {
  it('maps types to inputs', () => {
    expect(inputKind('bool')).toBe('checkbox');
    expect(inputKind('int')).toBe('number');
    expect(inputKind('float')).toBe('number');
    expect(inputKind('str')).toBe('text');
    expect(inputKind('list')).toBe('json');
    expect(inputKind('dict')).toBe('json');
    expect(inputKind('any')).toBe('json');
    expect(inputKind('weird')).toBe('json');
  });
});

describe('defaults round-trip', () => {
  const params = [
    p('flag', 'bool', true),
    p('off', 'bool', false),
    p('epochs', 'int', 10),
    p('neg', 'int', -3),
    p('C', 'float', 1.0),
    p('lr', 'float', 0.001),
    p('big', 'float', 1e-7),
    p('name', 'str', 'wine'),
    p('empty', 'str', ''),
    p('layers', 'list', [64, 32]),
    p('opts', 'dict', { a: 1, b: [true, null] }),
    p('anything', 'any', null),
    p('astr', 'any', 'text')
  ];

  it('turns defaults into inputs and back into the same values', () => {
    const inputs = initialInputs(params);
    const { values, errors } = parseAll(params, inputs);
    expect(errors).toEqual([]);
    for (const param of params) {
      expect(values[param.name], param.name).toEqual(param.default);
    }
  });

  it('shows defaults as the user would type them', () => {
    expect(toInput(p('C', 'float', 1.0))).toBe('1.0');
    expect(toInput(p('n', 'int', 3))).toBe('3');
    expect(toInput(p('lr', 'float', 0.5))).toBe('0.5');
    expect(toInput(p('flag', 'bool', true))).toBe(true);
    expect(toInput(p('name', 'str', 'x'))).toBe('x');
    expect(toInput(p('name', 'str', null))).toBe('');
    expect(toInput(p('layers', 'list', [1, 2]))).toBe('[1,2]');
    expect(toInput(p('x', 'any', undefined))).toBe('null');
  });
});

describe('parseParam', () => {
  it('parses typed inputs', () => {
    expect(parseParam(p('C', 'float'), '0.5')).toEqual({ ok: true, value: 0.5 });
    expect(parseParam(p('C', 'float'), ' 2 ')).toEqual({ ok: true, value: 2 });
    expect(parseParam(p('C', 'float'), '1e-3')).toEqual({ ok: true, value: 0.001 });
    expect(parseParam(p('n', 'int'), '42')).toEqual({ ok: true, value: 42 });
    expect(parseParam(p('n', 'int'), '-7')).toEqual({ ok: true, value: -7 });
    expect(parseParam(p('b', 'bool'), false)).toEqual({ ok: true, value: false });
    expect(parseParam(p('b', 'bool'), 'true')).toEqual({ ok: true, value: true });
    expect(parseParam(p('s', 'str'), ' keep spaces ')).toEqual({ ok: true, value: ' keep spaces ' });
    expect(parseParam(p('l', 'list'), '[1, "a"]')).toEqual({ ok: true, value: [1, 'a'] });
    expect(parseParam(p('d', 'dict'), '{"k": {"x": 1}}')).toEqual({ ok: true, value: { k: { x: 1 } } });
    expect(parseParam(p('a', 'any'), '3')).toEqual({ ok: true, value: 3 });
  });

  it('rejects wrong inputs with a message naming the parameter', () => {
    const cases: [IParameter, string, string][] = [
      [p('epochs', 'int'), '1.5', 'int'],
      [p('epochs', 'int'), '', 'int'],
      [p('epochs', 'int'), 'ten', 'int'],
      [p('C', 'float'), '', 'float'],
      [p('C', 'float'), 'abc', 'float'],
      [p('C', 'float'), 'Infinity', 'float'],
      [p('layers', 'list'), '{"a": 1}', 'list'],
      [p('layers', 'list'), '[1, 2', 'json'],
      [p('opts', 'dict'), '[1]', 'dict'],
      [p('opts', 'dict'), 'null', 'dict'],
      [p('anything', 'any'), 'not json', 'json'],
      [p('flag', 'bool'), 'maybe', 'bool']
    ];
    for (const [param, raw, code] of cases) {
      const result = parseParam(param, raw);
      expect(result.ok, `${param.name}=${raw}`).toBe(false);
      if (!result.ok) {
        expect(result.error.code).toBe(code);
        expect(result.error.name).toBe(param.name);
        expect(result.error.message).toContain(`"${param.name}"`);
      }
    }
  });

  it('writes messages in Chinese with the Chinese catalogue', () => {
    const result = parseParam(p('epochs', 'int'), 'x', makeT(chinese));
    expect(result.ok).toBe(false);
    if (!result.ok) {
      expect(result.error.message).toContain('epochs');
      expect(result.error.message).toContain('整数');
    }
  });
});

describe('parseAll', () => {
  it('collects every error in order and keeps the good values', () => {
    const params = [p('a', 'int', 1), p('b', 'float', 2.5), p('c', 'list', []), p('d', 'str', 'x')];
    const { values, errors } = parseAll(params, { a: 'x', b: '3', c: '{', d: 'y' });
    expect(errors.map(e => e.name)).toEqual(['a', 'c']);
    expect(values).toEqual({ b: 3, d: 'y' });
  });

  it('uses the default for a parameter without input', () => {
    const { values } = parseAll([p('a', 'int', 5)], {});
    expect(values).toEqual({ a: 5 });
  });
});
