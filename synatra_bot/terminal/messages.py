"""What the terminal chat says, in Korean and English, and the core's errors as it shows them.

`TerminalText(language)` looks a key up in `MESSAGES` (key -> (English, Korean)), as the Discord
catalogue does. A core error (`UserFacingError.key`) the terminal knows is said in its own words
(the Discord wording names Discord commands); any other keeps its plain message, in Korean
behind a Korean frame.
"""

from __future__ import annotations

from typing import Any

from synatra_bot.errors import EngineError, UserFacingError
from synatra_bot.language import Language
from synatra_bot.prompt.macros import fit_particle_slots

HELP_KO = """\
명령
  /regen        마지막 답장 다시 만들기
  /prev, /next  답장(인사말) 대안 넘겨 보기
  /continue     이어서 말하게 하기
  /next 이름     그 캐릭터가 지금 말하기
  /auto N       캐릭터끼리 N차례 주고받기 (Ctrl-C로 멈추기)
  /cast         장면의 캐릭터
  @이름 말       그 캐릭터에게 말하기 (장면에 있는 캐릭터만)
  /undo         마지막 주고받기 지우기
  /reset        처음부터 다시 (기록은 보관)
  /context      모델이 보는 프롬프트 요약
  /export       SillyTavern 채팅 파일(.jsonl)로 저장: 지금 폴더에 자동 이름으로
  /export 파일   그 파일로 저장
  /import 파일   SillyTavern 채팅 파일로 장면 새로 시작
  /sessions     이 자리의 장면 목록
  /resume 번호   이전 장면 다시 열기
  /branch       여기서 새 갈래 (지금 장면은 보관)
  /pin          마지막 대화를 기억에 고정 (/pin 3: 끝에서 세 번째, /pin 내용: 그 내용)
  /pins         고정한 기억 목록
  /unpin 번호    고정한 기억 빼기
  /help         도움말
  /quit         끝내기 (Ctrl-D): 답장 중이면 멈추고 바로 끝내요
Ctrl-C: 답장 중이면 멈추기, 아니면 끝내기
로그: {log}"""

HELP_EN = """\
commands
  /regen          new alternative of the newest reply
  /prev, /next    browse the alternatives (of a reply or the greeting)
  /continue       let the character keep talking
  /next NAME      that character speaks now
  /auto N         the characters take N turns among themselves (Ctrl-C stops them)
  /cast           who is in the scene
  @NAME text      talk to one character (one in the scene)
  /undo           remove the last exchange
  /reset          start over (history archived)
  /context        what the model sees
  /export         save as a SillyTavern chat (.jsonl), named for you, in this folder
  /export FILE    save it as FILE
  /import FILE    start the scene over from a SillyTavern chat file
  /sessions       this place's scenes, earlier ones too
  /resume NUMBER  reopen an earlier scene
  /branch         go on in a new branch; this one is kept
  /pin            pin the last turn into memory (/pin 3: the third from the end; /pin TEXT)
  /pins           the pinned memories
  /unpin NUMBER   remove a pin
  /help           this help
  /quit           quit (Ctrl-D); a reply being written stops, and the chat ends at once
Ctrl-C: stop the reply, or quit at the prompt
log: {log}"""

#: key -> (English, Korean).
MESSAGES: dict[str, tuple[str, str]] = {
    "help": (HELP_EN, HELP_KO),
    "hint": ("/help for help, /quit to quit", "/help 도움말, /quit 끝내기"),
    "log": ("(log: {log})", "(로그: {log})"),
    "log_unwritable": (
        "cannot write the log {log}: {reason}",
        "로그 {log}에 쓸 수 없어요: {reason}",
    ),
    "ask_name": (
        "Your name in the story (Enter: {default}): ",
        "이야기 속 내 이름은? (Enter: {default}): ",
    ),
    "name_remembered": (
        "(remembered: you are {name}; --user-name changes it)",
        "(기억했어요: 이제 {name|이에요}. --user-name으로 바꿀 수 있어요)",
    ),
    "loading": ("loading {model}…", "모델 준비 중: {model}…"),
    "card_imported": ("imported: #{id} {name}", "가져옴: #{id} {name}"),
    "card_updated": ("card updated: #{id} {name}", "카드 갱신: #{id} {name}"),
    "chat_imported": (
        "— imported {count} message(s) from {file} —",
        "— {file}에서 메시지 {count}개를 가져왔어요 —",
    ),
    "continuing": ("— continuing with {names} —", "— {names|와} 이어서 —"),
    "new_chat": ("— new chat with {name} —", "— {name|와} 새 대화 —"),
    "joins": ("— {name} joins the scene —", "— {name} 등장 —"),
    "no_greeting": (
        "({name}: no greeting: say something)",
        "({name}: 인사말 없음 — 먼저 말을 걸어 보세요)",
    ),
    "greetings": (
        "(greeting 1/{count} · /next shows another greeting)",
        "(인사말 1/{count} · /next 로 다른 인사말)",
    ),
    "saved": ("saved: {path}", "저장했어요: {path}"),
    "scene_running": (" ← running", " ← 진행 중"),
    "scene_line": (
        "#{id} {names} · {day} · {turns} turn(s){mark}",
        "#{id} {names} · {day} · {turns}턴{mark}",
    ),
    "resumed": ("— scene #{id} resumed —", "— 장면 #{id} 이어서 —"),
    "branched": ("— new branch, scene #{id} —", "— 새 갈래: 장면 #{id} —"),
    "cast": ("scene: {names}", "장면: {names}"),
    "nothing_to_undo": ("nothing to undo", "되돌릴 것이 없어요"),
    "undone": ("undone: {count} message(s)", "되돌렸어요: 메시지 {count}개"),
    "context_none": (
        "nothing sent yet; a preview of the next reply: {tokens} tokens",
        "보낸 프롬프트가 아직 없어요. 다음 답의 미리보기: {tokens}토큰",
    ),
    "context_sent": (
        "what the model was shown ({name}, {tokens} tokens)",
        "모델이 본 프롬프트 ({name}, {tokens}토큰)",
    ),
    "context_auto_turn": (
        "{name} spoke on its own: turn {turn} of {of} among the characters",
        "{name|가} 스스로 말했어요: 캐릭터끼리 주고받는 {of}차례 중 {turn}번째",
    ),
    "unknown_command": ("unknown command: {name} (/help)", "모르는 명령이에요: {name} (/help)"),
    "greeting_fixed": (
        "the greeting cannot be regenerated (/next shows another)",
        "인사말은 다시 만들 수 없어요 (/next 로 다른 인사말)",
    ),
    "not_in_scene": (
        "not in the scene: {wanted}. In it: {names}",
        "장면에 없는 캐릭터예요: {wanted}. 장면에는 {names}",
    ),
    "address_unknown": (
        "nobody called {wanted} is in the scene, so nothing was sent. In it: {names} (@NAME text)",
        "장면에 {wanted}(이)라는 캐릭터가 없어서 보내지 않았어요. 장면에는 {names} (@이름 말)",
    ),
    "auto_usage": (
        "/auto N: the characters take N turns among themselves (N from 1 to {most})",
        "/auto N: 캐릭터끼리 N차례 주고받아요 (N은 1부터 {most}까지)",
    ),
    "auto_done": (
        "— the characters took {count} turn(s) among themselves —",
        "— 캐릭터끼리 {count}차례 주고받았어요 —",
    ),
    "nothing_to_browse": ("no reply to browse", "넘겨 볼 답장이 없어요"),
    "alternative": ("({index}/{count})", "({index}/{count})"),
    "alternatives": ("({index}/{count} · /prev /next)", "({index}/{count} · /prev /next)"),
    "stopped": ("(stopped)", "(멈춤)"),
    "reply_failed": (
        "⚠ reply failed, nothing stored: {detail}",
        "⚠ 답장 실패, 저장하지 않았어요: {detail}",
    ),
    "unexpected": ("unexpected error (see the log: {log})", "예상하지 못한 오류 (로그: {log})"),
    "try_again": ("(/regen to try again)", "(/regen 으로 다시 시도)"),
    "timed_out": ("(timed out, nothing stored)", "(시간 초과, 저장하지 않았어요)"),
    "cut": ("(stopped, nothing stored)", "(멈춤, 저장하지 않았어요)"),
    "not_sent": (
        "({count} line(s) typed before /quit were not sent)",
        "(/quit 전에 입력한 {count}줄은 보내지 않았어요)",
    ),
    "error.chat_file_type": (
        "a SillyTavern chat file ends in .jsonl: {file}",
        "SillyTavern 채팅 파일은 .jsonl 파일이에요: {file}",
    ),
    # Errors the terminal raises itself.
    "error.no_character_named": (
        "no character named {name}: give a card file or a #id",
        "{name}(이)라는 캐릭터가 없어요: 카드 파일이나 #번호를 주세요",
    ),
    "error.several_characters": (
        "{name} matches several characters ({listed}): use a #id",
        "{name}에 맞는 캐릭터가 여럿이에요 ({listed}): #번호로 골라 주세요",
    ),
    "error.no_card_file": ("no card file at {filename}", "카드 파일이 없어요: {filename}"),
    "error.file_unreadable": (
        "cannot read {filename}: {reason}",
        "{filename} 파일을 읽을 수 없어요: {reason}",
    ),
    "error.file_unwritable": (
        "cannot write {filename}: {reason}",
        "{filename} 파일에 쓸 수 없어요: {reason}",
    ),
    # The core's errors, as the terminal says them.
    "error.generic": ("{message}", "문제가 생겼어요: {message}"),
    "error.not_found": ("Not found.", "찾을 수 없어요."),
    "error.no_character": (
        "that character doesn't exist or can't be played here ({message})",
        "그 캐릭터가 없거나 여기서 쓸 수 없어요 ({message})",
    ),
    "error.no_session": ("no scene is running here", "진행 중인 장면이 없어요"),
    "error.no_scene": (
        "no such scene here (/sessions lists them)",
        "그런 장면이 없어요 (/sessions)",
    ),
    "error.nothing_to_branch": (
        "there is nothing to branch from yet",
        "아직 갈래를 만들 대화가 없어요",
    ),
    "error.card": (
        "that character card can't be read: {reason}",
        "캐릭터 카드를 읽을 수 없어요: {reason}",
    ),
    "error.card_too_large": (
        "that file is too large ({size} bytes; the limit is {limit}, MAX_ATTACHMENT_BYTES)",
        "파일이 너무 커요 ({size}바이트, 최대 {limit}바이트: MAX_ATTACHMENT_BYTES)",
    ),
    "error.chat_file": (
        "that chat file can't be read (line {line}): {reason}",
        "채팅 파일을 읽을 수 없어요 ({line}번째 줄): {reason}",
    ),
    "error.chat_file_whole": (
        "that chat file can't be read: {reason}",
        "채팅 파일을 읽을 수 없어요: {reason}",
    ),
    "error.chat_file_swipes": (
        "that chat file can't be imported: the message on line {line} has more than {limit}"
        " swipes, the most one message may bring. Nothing was stored.",
        "채팅 파일을 가져올 수 없어요: {line}번째 줄 메시지의 스와이프가 한 메시지에 둘 수 있는"
        " {limit}개보다 많아요. 아무것도 저장하지 않았어요.",
    ),
    "error.chat_file_rows": (
        "that chat file can't be imported: its messages and swipes together are more than"
        " {limit}, the most one import may hold (over at line {line}). Nothing was stored.",
        "채팅 파일을 가져올 수 없어요: 메시지와 스와이프를 합쳐 한 번에 가져올 수 있는"
        " {limit}개를 넘어요 ({line}번째 줄에서). 아무것도 저장하지 않았어요.",
    ),
    "error.scene_rows_quota": (
        "your imported and branched scenes may hold {limit} rows in all; with this one they"
        " would hold {used}. Nothing was stored.",
        "가져오거나 갈라낸 장면은 모두 합쳐 {limit}줄까지 담을 수 있는데, 이것까지 넣으면"
        " {used}줄이 돼요. 아무것도 저장하지 않았어요.",
    ),
    "error.scene_quota": (
        "your imported and branched scenes may take {limit} in all; with this one they would"
        " take {used}. Nothing was stored.",
        "가져오거나 갈라낸 장면은 모두 합쳐 {limit}까지 둘 수 있는데, 이것까지 넣으면 {used}가"
        " 돼요. 아무것도 저장하지 않았어요.",
    ),
    "error.prompt_too_large": (
        "the character sheet alone takes {sheet_tokens} tokens but only {budget} fit:"
        " shorten the character or raise CONTEXT_SIZE",
        "캐릭터 설정만으로 {sheet_tokens}토큰이라 {budget}토큰 한도를 넘어요:"
        " 캐릭터를 줄이거나 CONTEXT_SIZE를 늘려 주세요",
    ),
    "pinned": ("📌 pinned as #{id}: {text}", "📌 #{id}번으로 고정했어요: {text}"),
    "pins": ("📌 pinned ({count}/{limit}):", "📌 고정 기억 ({count}/{limit}):"),
    "no_pins": (
        "no pins yet (/pin pins the last turn)",
        "고정 기억이 없어요 (/pin: 마지막 대화 고정)",
    ),
    "unpinned": ("📌 pin #{id} removed", "📌 #{id}번 고정 기억을 뺐어요"),
    "no_turn_to_pin": ("there is no such turn to pin", "고정할 대화가 없어요"),
    "unpin_usage": (
        "/unpin NUMBER: remove a pin by its number (see /pins)",
        "/unpin 번호: 그 번호의 고정 기억을 빼요 (/pins 참고)",
    ),
    "resume_usage": (
        "/resume NUMBER: reopen an earlier scene by its number (see /sessions)",
        "/resume 번호: 그 번호의 이전 장면을 다시 열어요 (/sessions 참고)",
    ),
    "command_failed": (
        "{name} could not take what followed it (/help)",
        "{name} 명령이 뒤에 쓴 내용을 처리하지 못했어요 (/help)",
    ),
    "error.pin_limit": (
        "this scene already holds {limit} pins, the most one may; /unpin one first",
        "한 장면에는 기억을 {limit}개까지 고정할 수 있어요. /unpin으로 먼저 하나를 빼 주세요",
    ),
    "error.no_pin": (
        "this scene has no pin #{id} (see /pins)",
        "#{id}번 고정 기억이 없어요 (/pins 참고)",
    ),
    "error.pin_empty": ("a pin needs some text", "고정할 내용이 비어 있어요"),
    "error.character_unavailable": (
        "{name} can no longer be played here",
        "{name|은} 이제 여기서 쓸 수 없어요",
    ),
}


#: The labels of the prompt report's lines (`PromptReport.to_text`) -> Korean; what follows a
#: label (names of blocks, entries and books) is data and stays as it is.
class TerminalText:
    """The terminal's words in one language."""

    def __init__(self, language: Language) -> None:
        self.language: Language = language

    def __call__(self, key: str, **params: Any) -> str:
        english, korean = MESSAGES[key]
        template = korean if self.language == "ko" else english
        # {name|이에요}: the name with the particle form that fits its last syllable.
        return fit_particle_slots(template, params).format(**params)

    def error(self, error: Exception) -> str:
        """An error as the terminal says it."""
        if isinstance(error, UserFacingError) and error.key in MESSAGES:
            key = error.key
            if key == "error.chat_file" and not error.params.get("line"):
                key = "error.chat_file_whole"  # about the file as a whole
            try:
                return self(key, **{"message": str(error), **error.params})
            except (KeyError, IndexError):
                pass
        if isinstance(error, UserFacingError | EngineError):
            return self("error.generic", message=str(error))
        return str(error)
