/**
 * The parameter form's logic, free of JupyterLab and the DOM: which input a parameter gets,
 * the text an input starts with (from the parameter's default), and turning what the user typed
 * back into typed values, with messages that name the parameter.
 */

import { makeT, N_, type TFunc } from './i18n';
import type { IParameter } from './types';

/** What an input holds: a checkbox's state or a text field's text. */
export type ParamInput = string | boolean;

export type InputKind = 'checkbox' | 'number' | 'text' | 'json';

export interface IParamError {
  /** The parameter's name. */
  name: string;
  /** What is wrong: the expected kind of value. */
  code: 'bool' | 'int' | 'float' | 'json' | 'list' | 'dict';
  /** A sentence for the user, naming the parameter. */
  message: string;
}

export type ParseResult =
  | { ok: true; value: unknown }
  | { ok: false; error: IParamError };

const english = makeT();

// one sentence per kind of error, msgids of the catalogue
const PARAM_ERRORS: Record<IParamError['code'], string> = {
  bool: N_('Parameter "{name}" must be true or false.'),
  int: N_('Parameter "{name}" must be a whole number, e.g. 10.'),
  float: N_('Parameter "{name}" must be a number, e.g. 0.5.'),
  json: N_('Parameter "{name}" is not valid JSON ({detail}); strings need double quotes, e.g. "text".'),
  list: N_('Parameter "{name}" must be a JSON list, e.g. [1, 2, 3].'),
  dict: N_('Parameter "{name}" must be a JSON object, e.g. {"key": 1}.')
};

/** The kind of input a parameter of this type gets. */
export function inputKind(type: string): InputKind {
  switch (type) {
    case 'bool':
      return 'checkbox';
    case 'int':
    case 'float':
      return 'number';
    case 'str':
      return 'text';
    default:
      // list, dict, any and unknown types are edited as JSON.
      return 'json';
  }
}

/** The input's initial content for a parameter: its default as the user would type it. */
export function toInput(param: IParameter): ParamInput {
  const value = param.default;
  switch (inputKind(param.type)) {
    case 'checkbox':
      return value === true || value === 'true' || value === 'True';
    case 'number':
      if (value === null || value === undefined) {
        return '';
      }
      // A float default that happens to be whole is shown as one: 1.0, not 1.
      if (param.type === 'float' && typeof value === 'number' && Number.isInteger(value)) {
        return value.toFixed(1);
      }
      return String(value);
    case 'text':
      return value === null || value === undefined ? '' : String(value);
    default:
      return JSON.stringify(value === undefined ? null : value);
  }
}

/** The initial inputs of all parameters, by name. */
export function initialInputs(params: IParameter[]): Record<string, ParamInput> {
  const inputs: Record<string, ParamInput> = {};
  for (const param of params) {
    inputs[param.name] = toInput(param);
  }
  return inputs;
}

function fail(name: string, code: IParamError['code'], t: TFunc, detail = ''): ParseResult {
  const message = t(PARAM_ERRORS[code], { name, detail });
  return { ok: false, error: { name, code, message } };
}

/** Turn one input back into a typed value, or an error naming the parameter. */
export function parseParam(param: IParameter, raw: ParamInput, t: TFunc = english): ParseResult {
  const name = param.name;
  switch (inputKind(param.type)) {
    case 'checkbox': {
      if (typeof raw === 'boolean') {
        return { ok: true, value: raw };
      }
      const text = raw.trim().toLowerCase();
      if (text === 'true' || text === 'false') {
        return { ok: true, value: text === 'true' };
      }
      return fail(name, 'bool', t);
    }
    case 'number': {
      const text = String(raw).trim();
      if (param.type === 'int') {
        if (!/^[-+]?\d+$/.test(text)) {
          return fail(name, 'int', t);
        }
        const value = Number(text);
        if (!Number.isSafeInteger(value)) {
          return fail(name, 'int', t);
        }
        return { ok: true, value };
      }
      const value = Number(text);
      if (text === '' || !Number.isFinite(value)) {
        return fail(name, 'float', t);
      }
      return { ok: true, value };
    }
    case 'text':
      return { ok: true, value: String(raw) };
    default: {
      const text = String(raw).trim();
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (error) {
        return fail(name, 'json', t, (error as Error).message);
      }
      if (param.type === 'list' && !Array.isArray(value)) {
        return fail(name, 'list', t);
      }
      if (
        param.type === 'dict' &&
        (value === null || typeof value !== 'object' || Array.isArray(value))
      ) {
        return fail(name, 'dict', t);
      }
      return { ok: true, value };
    }
  }
}

/** Parse every parameter; `values` holds those that parsed, `errors` the others, in order. */
export function parseAll(
  params: IParameter[],
  inputs: Record<string, ParamInput>,
  t: TFunc = english
): { values: Record<string, unknown>; errors: IParamError[] } {
  const values: Record<string, unknown> = {};
  const errors: IParamError[] = [];
  for (const param of params) {
    const raw = param.name in inputs ? inputs[param.name] : toInput(param);
    const result = parseParam(param, raw, t);
    if (result.ok) {
      values[param.name] = result.value;
    } else {
      errors.push(result.error);
    }
  }
  return { values, errors };
}
