"""English and Simplified Chinese for what Python shows a user inside a notebook (the widgets).

The language follows JupyterLab's language setting (the translation plugin's ``locale`` in the
user's lab settings), so the widgets speak the language the lab around them speaks;
``FERMI_LANGUAGE`` (``en`` or ``zh``) overrides it. The lab extension has its own table in
``labextension/src/i18n.ts``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ZH = {
    "Submit as training job": "提交为训练任务",
    "Image": "镜像",
    "Profile": "资源规格",
    "Name": "名称",
    "Priority": "优先级",
    "Cells": "单元格",
    "Cancel": "取消",
    "Deploy": "部署",
    "Min replicas": "最少副本",
    "Max replicas": "最多副本",
    "Target concurrency": "目标并发",
    "unavailable": "不可用",
    "Submitted: job {id}": "已提交：任务 {id}",
    "Deployed at {url}": "已部署：{url}",
    "API key (shown once)": "API 密钥（仅显示一次）",
    "Parameter {name}: {value!r} is not valid JSON.": "参数 {name}：{value!r} 不是合法的 JSON。",
    "queued": "排队中",
    "running": "运行中",
    "succeeded": "已成功",
    "failed": "已失败",
    "cancelled": "已取消",
}


def lab_locale() -> str | None:
    """The locale chosen in JupyterLab's language menu, if any (e.g. ``zh_CN``)."""
    root = Path(os.environ.get("JUPYTERLAB_SETTINGS_DIR")
                or Path.home() / ".jupyter" / "lab" / "user-settings")
    path = root / "@jupyterlab" / "translation-extension" / "plugin.jupyterlab-settings"
    try:
        text = path.read_text()
    except OSError:
        return None
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # the file is JSON5-ish: drop comments
    try:
        return json.loads(text).get("locale")
    except ValueError:
        return None


def language() -> str:
    chosen = os.environ.get("FERMI_LANGUAGE") or lab_locale() or ""
    return "zh" if chosen.lower().startswith("zh") else "en"


def translate(text: str) -> str:
    return ZH.get(text, text) if language() == "zh" else text
