/** The lab's translator stand-in for tests: the real Chinese catalogue (the fermi.json that
 * jupyterlab_server serves, generated from fermi_extension/locale/zh_CN/LC_MESSAGES/fermi.po). */
import { readFileSync } from 'fs';
import { resolve } from 'path';

import type { IBundle } from '../src/i18n';

const data: Record<string, unknown> = JSON.parse(
  readFileSync(
    resolve(__dirname, '../../fermi_extension/locale/zh_CN/LC_MESSAGES/fermi.json'),
    'utf-8'
  )
);

export const chinese: IBundle = {
  __: (msgid: string) => {
    const found = data[msgid];
    return Array.isArray(found) && typeof found[0] === 'string' ? found[0] : msgid;
  }
};
