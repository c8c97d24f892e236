"""extract-dialogue: scripts written here (Chinese and English) -> expected Alpaca records."""

import pytest

from tunelab.data.io import DataError
from tunelab.data.prepare import extract_dialogue
from tunelab.data.prepare.dialogue import (
    extract_dialogue_files,
    is_scene_heading,
    parse_semicolon_speaker,
    parse_speaker,
    strip_directions,
)

ZH = """第一集

第1幕
（碎玉轩）
槿汐：小主，怎么不睡了？
甄嬛（闻得雷声，床上坐起）：我有些害怕。
槿汐：那些鬼神之说都是以讹传讹的。
（雷声）
嬛嬛：我不是害怕鬼神之说，
我是害怕此事并没有完全了结。
甄嬛：【低声】你细想想。

第2幕
甄嬛：皇上万福金安。
皇帝：快起来吧。
莞贵人：谢皇上。
丽嫔(惊慌)：什么东西？！（华妃：什么事啊？）
甄嬛：是丽嫔的声音。
场景：御花园，夜
眉庄：是啊。

浣碧走过来，看了看四周。
甄嬛: 我们快走吧。
"""


def test_chinese_script_records_history_aliases_and_scenes():
    res = extract_dialogue(ZH, "甄嬛", aliases=["嬛嬛", "莞贵人"], history=1, source="zh.txt")
    assert res.kept == [
        {"instruction": "小主，怎么不睡了？", "input": "", "output": "我有些害怕。", "history": []},
        # alias line + its continuation line + the next target line, merged into one answer
        {"instruction": "那些鬼神之说都是以讹传讹的。", "input": "",
         "output": "我不是害怕鬼神之说，我是害怕此事并没有完全了结。你细想想。",
         "history": [["小主，怎么不睡了？", "我有些害怕。"]]},
        # 第2幕 resets the context: its first line has no prompt
        {"instruction": "快起来吧。", "input": "", "output": "谢皇上。", "history": []},
        {"instruction": "什么东西？！", "input": "", "output": "是丽嫔的声音。", "history": [["快起来吧。", "谢皇上。"]]},
        # 场景：… is a new scene; the narration line after the blank line is skipped
        {"instruction": "是啊。", "input": "", "output": "我们快走吧。", "history": []},
    ]
    assert [(r["position"], r["reason"], r["record"]) for r in res.rejected] == [
        ("zh.txt:14", "no_prompt", {"output": "皇上万福金安。"})]
    assert res.counts["scenes"] == 3 and res.counts["records"] == 5 and res.counts["target_turns"] == 6


EN = """ACT I
SCENE 1. A room in the castle.

BERNARDO: Who's there?
HAMLET: Nay, answer me. [Draws sword]
Stand, and unfold yourself.
BERNARDO: Long live the king!
Hamlet (aside): He knows not
what he says.

INT. CASTLE HALL - NIGHT

HORATIO: My lord, I came to see your father's funeral.
LORD HAMLET: I pray thee, do not mock me.
HORATIO (quietly): Indeed, my lord, it followed hard upon.
Ham.: Thrift, thrift, Horatio!
"""


def test_english_script_with_aliases_and_directions():
    res = extract_dialogue(EN, "Hamlet", aliases=["Lord Hamlet", "Ham."], history=2, system="You are Hamlet.")
    assert res.kept == [
        {"instruction": "Who's there?", "input": "", "output": "Nay, answer me. Stand, and unfold yourself.",
         "system": "You are Hamlet.", "history": []},
        {"instruction": "Long live the king!", "input": "", "output": "He knows not what he says.",
         "system": "You are Hamlet.", "history": [["Who's there?", "Nay, answer me. Stand, and unfold yourself."]]},
        {"instruction": "My lord, I came to see your father's funeral.", "input": "",
         "output": "I pray thee, do not mock me.", "system": "You are Hamlet.", "history": []},
        {"instruction": "Indeed, my lord, it followed hard upon.", "input": "", "output": "Thrift, thrift, Horatio!",
         "system": "You are Hamlet.",
         "history": [["My lord, I came to see your father's funeral.", "I pray thee, do not mock me."]]},
    ]
    assert res.rejected == []


def test_no_history_field_by_default_and_history_cap():
    script = "A：一\n甲：1\nA：二\n甲：2\nA：三\n甲：3\n"
    assert extract_dialogue(script, "甲").kept[0] == {"instruction": "一", "input": "", "output": "1"}
    last = extract_dialogue(script, "甲", history=1).kept[-1]
    assert last["history"] == [["二", "2"]]


def test_unknown_character_lists_speakers():
    with pytest.raises(DataError, match=r"s.txt: no line spoken by '甄環'.*槿汐 \(1\)"):
        extract_dialogue("槿汐：小主。\n甄嬛：嗯。\n", "甄環", source="s.txt")


def test_helpers():
    assert parse_speaker("甄嬛（微笑）：好。") == ("甄嬛", "好。")
    assert parse_speaker("JOHN (V.O.): Hi: there") == ("JOHN", "Hi: there")
    assert parse_speaker("他说，今天：好") is None  # a comma cannot be in a name
    assert parse_speaker("10:30 the train left") is None
    assert strip_directions("好（笑）的(laughs)[beat]【注】呀") == "好的呀"
    for heading in ("第一幕", "第203幕（续）", "第十二集", "SCENE 2", "Act IV", "INT. HOUSE - NIGHT", "场景：御花园"):
        assert is_scene_heading(heading), heading
    for line in ("甄嬛：第一次见面。", "Actually: no", "Integer: 5", "第一场雪下得很大。"):
        assert not is_scene_heading(line), line


# 皇帝；/槿汐; are the colon typed as a semicolon; 太医 never speaks with a colon, so its line stays text
TYPOS = """第1幕
槿汐：小主，皇上来了。
皇帝：朕来看你了。
甄嬛：臣妾恭迎皇上。
皇帝；你身子可好些了？
甄嬛：好多了。
槿汐;小主，该喝药了。
甄嬛：放着吧。
太医；娘娘脉象平稳。
"""


def test_semicolon_markers_of_known_speakers_start_a_new_line():
    res = extract_dialogue(TYPOS, "甄嬛", source="typo.txt")
    assert res.kept == [
        {"instruction": "朕来看你了。", "input": "", "output": "臣妾恭迎皇上。"},
        {"instruction": "你身子可好些了？", "input": "", "output": "好多了。"},
        # the unknown 太医；… is kept as text of the open line, and reported
        {"instruction": "小主，该喝药了。", "input": "", "output": "放着吧。太医；娘娘脉象平稳。"},
    ]
    assert res.counts["semicolon_markers"] == 2 and res.counts["unknown_markers"] == 1
    assert res.warnings == ["typo.txt:9: 太医；娘娘脉象平稳。: a ';' after an unknown name; kept as text. If it is a "
                            "speaker, write 'NAME：…' (or pass --alias for the character)"]
    # an alias makes the target's own semicolon marker count even if it never speaks with a colon
    res = extract_dialogue("甲：你好。\n嬛嬛；好。\n", "甄嬛", aliases=["嬛嬛"])
    assert res.kept == [{"instruction": "你好。", "input": "", "output": "好。"}] and not res.warnings


def test_semicolon_marker_in_english_and_prose_semicolons():
    script = "HORATIO: Hail to your lordship.\nHAMLET: I am glad to see you well.\nHORATIO; The same, my lord.\n" \
             "HAMLET: Sir, my good friend; I'll change that name with you.\n"
    res = extract_dialogue(script, "Hamlet")
    assert [r["output"] for r in res.kept] == ["I am glad to see you well.",
                                               "Sir, my good friend; I'll change that name with you."]
    assert res.kept[1]["instruction"] == "The same, my lord."
    assert parse_semicolon_speaker("他说了很多很多很多很多的话；然后走了") is None  # too long for a name: prose
    assert parse_semicolon_speaker("皇帝（怒）；大胆！") == ("皇帝", "大胆！")
    assert parse_semicolon_speaker("皇帝：大胆；放肆！") is None  # a proper colon marker comes first


def test_no_merge_gives_one_record_per_line():
    script = "第1幕\n槿汐：小主。\n槿汐：该歇息了。\n甄嬛：嗯。\n甄嬛：你也去睡吧。\n槿汐：是。\n甄嬛：等等，\n把灯熄了。\n"
    merged = extract_dialogue(script, "甄嬛")
    assert merged.kept == [{"instruction": "小主。该歇息了。", "input": "", "output": "嗯。你也去睡吧。"},
                           {"instruction": "是。", "input": "", "output": "等等，把灯熄了。"}]
    single = extract_dialogue(script, "甄嬛", merge=False, history=1)
    assert single.kept == [
        {"instruction": "该歇息了。", "input": "", "output": "嗯。", "history": []},
        {"instruction": "该歇息了。", "input": "", "output": "你也去睡吧。", "history": [["该歇息了。", "嗯。"]]},
        # a wrapped line (no speaker, right under a speaker line) is still that one line
        {"instruction": "是。", "input": "", "output": "等等，把灯熄了。", "history": [["该歇息了。", "你也去睡吧。"]]},
    ]
    assert single.counts["turns"] == 6 and merged.counts["turns"] == 4


def test_several_scripts_share_known_speakers_but_not_context():
    ep1 = "皇帝：朕乏了。\n甄嬛：臣妾告退。\n"
    ep2 = "甄嬛：皇上？\n皇帝；进来吧。\n甄嬛：是。\n"  # 皇帝 speaks with a colon only in ep1
    res = extract_dialogue_files([("ep1.txt", ep1), ("ep2.txt", ep2)], "甄嬛")
    assert res.kept == [{"instruction": "朕乏了。", "input": "", "output": "臣妾告退。"},
                        {"instruction": "进来吧。", "input": "", "output": "是。"}]
    # ep2 opens with the target: no prompt carried over from ep1
    assert [(r["position"], r["reason"]) for r in res.rejected] == [("ep2.txt:1", "no_prompt")]
    assert res.counts["files"] == 2 and res.counts["lines"] == 5 and res.counts["semicolon_markers"] == 1
    with pytest.raises(DataError, match=r"2 scripts: no line spoken by '乙'"):
        extract_dialogue_files([("a.txt", ep1), ("b.txt", ep2)], "乙")
