/** Icons of the extension (inline SVG, themed with JupyterLab's icon colours). */

import { LabIcon } from '@jupyterlab/ui-components';

const fermiSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M5 3h13v3H8.5v4.5H16v3H8.5V21H5z"/>
    <circle cx="19" cy="18" r="2.5"/>
  </g>
</svg>`;

const zapSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" d="M13 2 4 14h6l-1 8 9-12h-6z"/>
</svg>`;

export const fermiIcon = new LabIcon({ name: 'fermi:logo', svgstr: fermiSvg });
export const zapIcon = new LabIcon({ name: 'fermi:zap', svgstr: zapSvg });
