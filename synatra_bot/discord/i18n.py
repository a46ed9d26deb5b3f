"""Korean and English text for replies, and the translator for command names and descriptions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from synatra_bot.prompt.macros import fit_particle_slots

#: Reply catalogue: key -> (English, Korean).
MESSAGES: dict[str, tuple[str, str]] = {
    "error.generic": ("Something went wrong: {message}", "문제가 생겼어요: {message}"),
    "error.unexpected": (
        "Sorry, something went wrong on my side. The moderators can find details in the logs.",
        "죄송해요, 봇 쪽에서 문제가 생겼어요. 자세한 내용은 관리자 로그에 남았어요.",
    ),
    "error.permission": ("You can't do that.", "그 작업을 할 권한이 없어요."),
    "error.moderator_only": (
        "Only moderators (Manage Server) can do that.",
        "서버 관리 권한이 있는 관리자만 할 수 있어요.",
    ),
    "error.not_owner": (
        "Only the character's owner or a moderator can change it.",
        "캐릭터 주인이나 관리자만 바꿀 수 있어요.",
    ),
    "error.not_found": ("Not found.", "찾을 수 없어요."),
    "error.no_character": (
        "That character doesn't exist or isn't available here.",
        "그 캐릭터가 없거나 여기서 쓸 수 없어요.",
    ),
    "error.card": (
        "That character card can't be read: {reason}",
        "캐릭터 카드를 읽을 수 없어요: {reason}",
    ),
    "error.risum": (
        "That RisuAI module (.risum) can't be used: {reason}. Nothing was changed.",
        "RisuAI 모듈(.risum)을 쓸 수 없어요: {reason}. 아무것도 바뀌지 않았어요.",
    ),
    "error.module_character": (
        "A RisuAI module (.risum) holds scripts and a lorebook, not a character: "
        "name the character that gets them with the `character` option.",
        "RisuAI 모듈(.risum)에는 캐릭터가 아니라 스크립트와 로어북이 들어 있어요. "
        "`캐릭터` 옵션으로 받을 캐릭터를 골라 주세요.",
    ),
    "error.not_module": (
        "The `character` option is only for a RisuAI module (.risum); a card file becomes a "
        "new character.",
        "`캐릭터` 옵션은 RisuAI 모듈(.risum)에만 써요. 카드 파일은 새 캐릭터가 돼요.",
    ),
    "error.card_too_large": (
        "That file is too large ({size} bytes; the limit is {limit}).",
        "파일이 너무 커요 ({size}바이트, 최대 {limit}바이트).",
    ),
    "error.prompt_too_large": (
        "The character sheet alone takes {sheet_tokens} tokens but only {budget} fit. "
        "Shorten the character or raise the context size.",
        "캐릭터 설정만으로 {sheet_tokens}토큰이라 {budget}토큰 한도를 넘어요. "
        "캐릭터를 줄이거나 컨텍스트 크기를 늘려 주세요.",
    ),
    "error.rate_limited": (
        "Slow down a little: try again in {retry_after} s.",
        "조금 천천히요! {retry_after}초 뒤에 다시 해 주세요.",
    ),
    "error.nsfw_channel": (
        "NSFW characters can only be used in age-restricted channels.",
        "성인 캐릭터는 연령 제한 채널에서만 쓸 수 있어요.",
    ),
    "error.nsfw_dm": (
        "NSFW characters play in your DMs only once you turn them on: /rp dm-nsfw enabled:True.",
        "DM에서 성인 캐릭터와 롤플레이하려면 먼저 `/롤플레이 dm-성인 켜기:True`로 켜 주세요.",
    ),
    "error.share_needs_server": (
        "Sharing a character needs a server.",
        "캐릭터 공유는 서버 안에서만 할 수 있어요.",
    ),
    "error.no_session": (
        "No roleplay is running here. Start one with /rp start.",
        "여기서 진행 중인 롤플레이가 없어요. `/롤플레이 시작`으로 시작해 주세요.",
    ),
    "error.channel_disabled": (
        "The bot isn't enabled in this channel. A moderator can turn it on with /config channel.",
        "이 채널에서는 봇이 꺼져 있어요. 관리자가 `/설정 채널`로 켤 수 있어요.",
    ),
    "error.engine": (
        "The model couldn't answer: {message}",
        "모델이 대답하지 못했어요: {message}",
    ),
    "error.attachment_type": (
        "Attach a character card as .png, .json or .charx (or a RisuAI module as .risum).",
        "캐릭터 카드는 .png, .json 또는 .charx 파일로 첨부해 주세요 (RisuAI 모듈은 .risum).",
    ),
    "error.nothing_to_undo": ("There is nothing to undo.", "되돌릴 대화가 없어요."),
    "error.busy": (
        "A reply is already being written here.",
        "지금 이 채널에서 답장을 쓰는 중이에요.",
    ),
    "error.channel_type": (
        "Use this in a server text channel or thread.",
        "서버의 텍스트 채널이나 스레드에서 써 주세요.",
    ),
    "error.webhook_permission": (
        "I need the Manage Webhooks permission in this channel to speak as characters.",
        "캐릭터로 말하려면 이 채널에서 '웹후크 관리' 권한이 필요해요.",
    ),
    "error.webhook_gone": (
        "The character's webhook was removed and could not be made again; the reply is not "
        "part of the story.",
        "캐릭터 웹후크가 삭제됐는데 새로 만들지 못했어요. 이 답장은 이야기에 남지 않아요.",
    ),
    "error.image_type": (
        "Attach a PNG, JPEG, WebP or GIF image.",
        "PNG, JPEG, WebP, GIF 이미지를 첨부해 주세요.",
    ),
    "error.image_unreadable": (
        "That file isn't a PNG, JPEG, WebP or GIF image that can be read.",
        "읽을 수 있는 PNG, JPEG, WebP, GIF 이미지가 아니에요.",
    ),
    "error.image_pixels": (
        "That image has too many pixels: the limit is {side}x{side}.",
        "이미지 픽셀이 너무 많아요. 최대 {side}x{side}까지 돼요.",
    ),
    "error.image_too_large": (
        "That image is still too large after shrinking it ({size} bytes; the limit is {limit}).",
        "이미지를 줄여도 너무 커요 ({size}바이트, 최대 {limit}바이트).",
    ),
    "error.character_limit": (
        "You already have {limit} characters here, the most allowed. "
        "Delete one first, or ask a moderator to raise the limit (/config characters).",
        "여기서 만들 수 있는 캐릭터 {limit}개를 이미 모두 만들었어요. "
        "하나를 지우거나 관리자에게 한도를 늘려 달라고 해 주세요 (`/설정 캐릭터한도`).",
    ),
    "error.session_running": (
        "A roleplay with {name} is running here. Its starter or a moderator can /rp stop it first.",
        "여기서 {name|와}의 롤플레이가 진행 중이에요. "
        "시작한 사람이나 관리자가 먼저 `/롤플레이 끝내기`를 해야 해요.",
    ),
    "error.starter_only": (
        "Only the person who started this roleplay or a moderator can do that.",
        "롤플레이를 시작한 사람이나 관리자만 할 수 있어요.",
    ),
    "error.cannot_speak": (
        "You can't send messages in this channel, so you can't play here either.",
        "이 채널에서 메시지를 보낼 권한이 없어서 롤플레이도 할 수 없어요.",
    ),
    "error.cannot_read": (
        "You can't read this channel's message history, so you can't read its roleplay either.",
        "이 채널의 메시지 기록을 볼 권한이 없어서 롤플레이 내용도 볼 수 없어요.",
    ),
    "error.stop_not_yours": (
        "Only the player whose turn this is, the roleplay's starter or a moderator can stop it.",
        "지금 차례인 플레이어, 롤플레이를 시작한 사람이나 관리자만 멈출 수 있어요.",
    ),
    "error.character_unavailable": (
        "{name} can no longer be played here (it was made private, removed or is awaiting "
        "approval). The starter or a moderator can /rp start another character.",
        "{name|은} 이제 여기서 쓸 수 없어요 (비공개로 바뀌었거나, 삭제됐거나, 승인 대기 중이에요). "
        "시작한 사람이나 관리자가 `/롤플레이 시작`으로 다른 캐릭터를 시작할 수 있어요.",
    ),
    "error.no_scene": (
        "No such scene in this channel (/rp sessions lists them).",
        "이 채널에 그런 장면이 없어요 (`/롤플레이 장면목록`으로 볼 수 있어요).",
    ),
    "error.nothing_to_branch": (
        "There is nothing to branch from yet.",
        "아직 갈래를 만들 대화가 없어요.",
    ),
    "error.chat_file": (
        "That chat file can't be read (line {line}): {reason}",
        "채팅 파일을 읽을 수 없어요 ({line}번째 줄): {reason}",
    ),
    "error.chat_file_swipes": (
        "That chat file can't be imported: the message on line {line} has more than {limit} "
        "swipes, the most one message may bring. Delete some in SillyTavern and try again.",
        "채팅 파일을 가져올 수 없어요: {line}번째 줄 메시지의 스와이프가 한 메시지에 둘 수 있는 "
        "{limit}개보다 많아요. SillyTavern에서 몇 개 지우고 다시 해 주세요.",
    ),
    "error.chat_file_rows": (
        "That chat file can't be imported: its messages and swipes together are more than "
        "{limit}, the most one import may hold (over at line {line}). Split the chat or delete "
        "swipes, and try again.",
        "채팅 파일을 가져올 수 없어요: 메시지와 스와이프를 합쳐 한 번에 가져올 수 있는 "
        "{limit}개보다 많아요({line}번째 줄에서 넘어요). 채팅을 나누거나 스와이프를 지우고 다시 "
        "해 주세요.",
    ),
    "error.lorebook": (
        "That lorebook file can't be read: {reason}",
        "로어북 파일을 읽을 수 없어요: {reason}",
    ),
    "error.lorebook_type": (
        "Attach a lorebook: a SillyTavern World Info file (.json) or a card with one "
        "(.png, .json, .charx).",
        "로어북 파일을 첨부해 주세요: SillyTavern World Info 파일(.json)이나 로어북이 든 카드"
        "(.png, .json, .charx)요.",
    ),
    "error.stop_string_empty": (
        "A stop string is empty: put text between the | marks.",
        "비어 있는 정지 문자열이 있어요. | 사이에 글자를 넣어 주세요.",
    ),
    "error.stop_string_control": (
        "{token} is one of the model's own control tokens: replies already stop there, so it "
        "cannot be a stop string.",
        "{token}은(는) 모델의 제어 토큰이라 정지 문자열로 쓸 수 없어요. 답장은 이미 거기서 멈춰요.",
    ),
    "config.stop_form": ("Stop strings", "정지 문자열"),
    "config.stop_form_label": (
        "One a line (\\n: line break)",
        "한 줄에 하나씩 (\\n: 줄바꿈)",
    ),
    "error.stop_strings_many": (
        "At most {limit} stop strings.",
        "정지 문자열은 {limit}개까지예요.",
    ),
    "error.stop_string_long": (
        "A stop string may be at most {limit} characters.",
        "정지 문자열 하나는 {limit}자까지예요.",
    ),
    "error.lorebook_budget": (
        "The lorebook budget must be between 0 and {limit} tokens (the context size here).",
        "로어북 예산은 0에서 {limit}토큰(여기의 컨텍스트 크기) 사이여야 해요.",
    ),
    "lorebook.imported": (
        "Saved as this channel's lorebook: **{name}** ({entries} entries).",
        "이 채널의 로어북으로 저장했어요: **{name}** (항목 {entries}개)",
    ),
    "lorebook.exported": (
        "This channel's lorebook **{name}** ({entries} entries) as a SillyTavern World Info file.",
        "이 채널의 로어북 **{name}** (항목 {entries}개)을 SillyTavern World Info 파일로 보내요.",
    ),
    "lorebook.imported_personal": (
        "Saved as your lorebook **{name}** ({entries} entries). Characters whose card names it "
        "use it; `/lorebook attach` links another.",
        "내 로어북으로 저장했어요: **{name}** (항목 {entries}개). 카드에 이 이름이 적힌 캐릭터가 "
        "쓰고, 다른 캐릭터는 `/로어북 연결`로 이어 주세요.",
    ),
    "lorebook.exported_personal": (
        "Your lorebook **{name}** ({entries} entries) as a SillyTavern World Info file.",
        "내 로어북 **{name}** (항목 {entries}개)을 SillyTavern World Info 파일로 보내요.",
    ),
    "lorebook.none_personal": (
        "You have no lorebooks yet: `/lorebook import` brings one in.",
        "아직 내 로어북이 없어요. `/로어북 가져오기`로 가져올 수 있어요.",
    ),
    "lorebook.list_title": ("**Your lorebooks**", "**내 로어북**"),
    "lorebook.list_line": (
        "- **{name}**: {entries} entries, used by {characters}",
        "- **{name}**: 항목 {entries}개, 쓰는 캐릭터: {characters}",
    ),
    "lorebook.attached": (
        "**{character}** now uses your lorebook **{name}** (instead of the one in its card).",
        "이제 {character|은} 카드에 든 로어북 대신 내 로어북 {name|을} 써요.",
    ),
    "lorebook.detached": (
        "**{character}** uses the lorebook in its card again.",
        "{character|은} 다시 카드에 든 로어북을 써요.",
    ),
    "lorebook.deleted": (
        "Deleted your lorebook **{name}**.",
        "내 로어북 {name|을} 지웠어요.",
    ),
    "error.no_lorebook": (
        "There is no lorebook called **{name}** (see `/lorebook list`).",
        "{name|이라는} 로어북이 없어요 (`/로어북 목록` 참고).",
    ),
    "error.pin_limit": (
        "This scene already holds {limit} pins, the most one scene may; remove one first"
        " (/rp memory remove_pin:…).",
        "한 장면에는 기억을 {limit}개까지 고정할 수 있어요. 먼저 하나를 빼 주세요"
        " (`/롤플레이 기억 고정빼기:…`).",
    ),
    "error.pin_players": (
        "Only the scene's players, whoever started it and moderators can pin its turns.",
        "이 장면의 플레이어, 시작한 사람, 관리자만 기억을 고정할 수 있어요.",
    ),
    "error.pin_not_turn": (
        "Only a turn of the scene running in this channel can be pinned.",
        "이 채널에서 진행 중인 장면의 대화만 고정할 수 있어요.",
    ),
    "error.no_pin": (
        "This scene has no pin #{id} (see /rp memory).",
        "이 장면에는 #{id}번 고정 기억이 없어요 (`/롤플레이 기억` 참고).",
    ),
    "error.pin_not_yours": (
        "Only who pinned it, whoever started the scene or a moderator can change that pin.",
        "고정한 사람, 장면을 시작한 사람, 관리자만 그 기억을 바꿀 수 있어요.",
    ),
    "error.pin_empty": ("A pin needs some text.", "고정할 내용이 비어 있어요."),
    "error.lorebook_limit": (
        "You already have {limit} lorebooks, the most one member may keep; delete one first.",
        "로어북은 한 사람이 {limit}개까지 둘 수 있어요. 먼저 하나를 지워 주세요.",
    ),
    "error.character_quota": (
        "Your characters here may take {limit} in all; with this one they would take {used}. "
        "Delete one, use a smaller card or image, or ask a moderator (/config characters).",
        "여기서 내 캐릭터는 모두 합쳐 {limit}까지 둘 수 있어요. 이것까지 넣으면 {used}가 돼요. "
        "하나를 지우거나 더 작은 카드나 이미지를 쓰거나, 관리자에게 물어봐 주세요 "
        "(`/설정 캐릭터한도`).",
    ),
    "error.scene_rows_quota": (
        "Your imported and branched scenes here may hold {limit} rows in all; with this one "
        "they would hold {used}. Ask a moderator to forget old scenes (/config archive) or to "
        "raise the limit, or import a shorter chat.",
        "여기서 내가 가져오거나 갈라낸 장면은 모두 합쳐 {limit}줄까지 담을 수 있어요. "
        "이것까지 넣으면 {used}줄이 돼요. 관리자에게 오래된 장면을 정리하거나 한도를 늘려 "
        "달라고 하거나(`/설정 보관`), 더 짧은 대화를 가져와 주세요.",
    ),
    "error.scene_quota": (
        "Your imported and branched scenes here may take {limit} in all; with this one they "
        "would take {used}. Ask a moderator to forget old scenes (/config archive) or to "
        "raise the limit, or import a shorter chat.",
        "여기서 내가 가져오거나 갈라낸 장면은 모두 합쳐 {limit}까지 둘 수 있어요. "
        "이것까지 넣으면 {used}가 돼요. 관리자에게 오래된 장면을 정리하거나 한도를 늘려 "
        "달라고 하거나(`/설정 보관`), 더 짧은 대화를 가져와 주세요.",
    ),
    "error.lorebook_quota": (
        "Your lorebooks may take {limit} in all; with this one they would take {used}. "
        "Delete one or import a smaller book.",
        "로어북은 모두 합쳐 {limit}까지 둘 수 있어요. 이 책까지 넣으면 {used}가 돼요. "
        "하나를 지우거나 더 작은 책을 가져와 주세요.",
    ),
    "lorebook.none": ("This channel has no lorebook.", "이 채널에는 로어북이 없어요."),
    "lorebook.cleared": ("Removed this channel's lorebook.", "이 채널의 로어북을 지웠어요."),
    "error.chat_file_type": (
        "Attach a SillyTavern chat file (.jsonl).",
        "SillyTavern 채팅 파일(.jsonl)을 첨부해 주세요.",
    ),
    "error.already_in_cast": (
        "**{name}** is already in this scene.",
        "{name|는} 이미 이 장면에 있어요.",
    ),
    "error.cast_full": (
        "This scene already has {limit} characters (the server's limit).",
        "이 장면에는 이미 캐릭터가 {limit}명 있어요 (서버 제한).",
    ),
    "error.not_in_cast": (
        "That character is not in this scene (/rp cast list).",
        "그 캐릭터는 이 장면에 없어요 (`/롤플레이 출연진 목록`).",
    ),
    "error.last_in_cast": (
        "A scene keeps at least one character: end it with /rp stop instead.",
        "장면에는 캐릭터가 한 명은 있어야 해요. 끝내려면 `/롤플레이 끝내기`를 쓰세요.",
    ),
    "reply.greeting_fixed": (
        "A greeting is not regenerated: browse the others with ◀ ▶.",
        "인사말은 다시 만들 수 없어요. ◀ ▶ 로 다른 인사말을 볼 수 있어요.",
    ),
    "reply.gone": (
        "That reply is no longer part of the story.",
        "그 답장은 이제 이야기에 없어요.",
    ),
    "reply.not_latest": (
        "Only the newest reply can be regenerated or continued.",
        "가장 최근 답장만 다시 생성하거나 이어 쓸 수 있어요.",
    ),
    "reply.queued": ("⏳ Waiting in line: #{position}", "⏳ 대기 중: {position}번째"),
    "reply.failed": (
        "⚠️ The reply broke off ({message}). Send a message or press regenerate to try again.",
        "⚠️ 답장이 중간에 끊겼어요 ({message}). 메시지를 보내거나 다시 생성해 주세요.",
    ),
    "reply.stopped": ("stopped", "중지됨"),
    "storage.waiting": (
        "⏳ Saving is backed up: your line waits a moment and is kept as soon as it can be.",
        "⏳ 저장이 밀려 있어요. 잠시만요, 이 말은 저장되는 대로 이어 갈게요.",
    ),
    "storage.not_kept": (
        "⚠️ The database stayed busy and this turn was not kept. Please try again in a moment.",
        "⚠️ 저장소가 계속 바빠서 이번 말은 저장하지 못했어요. 잠시 뒤에 다시 해 주세요.",
    ),
    "storage.gone": (
        "⚠️ Something happened to the bot's database file, so nothing is saved for now: your "
        "line was not kept. The bot's host can read why in the logs.",
        "⚠️ 봇의 저장 파일에 문제가 생겨서 지금은 아무것도 저장하지 않아요. 이 말은 저장되지 "
        "않았어요. 봇 운영자는 로그에서 이유를 볼 수 있어요.",
    ),
    "reply.timed_out": (
        "⚠️ The reply took too long and was stopped.",
        "⚠️ 답장이 너무 오래 걸려서 멈췄어요.",
    ),
    "reply.cancelled": ("⚠️ The reply was cancelled.", "⚠️ 답장이 취소됐어요."),
    "reply.restarted": (
        "⚠️ Cut off: the bot restarted. This part is not in the story.",
        "⚠️ 봇이 다시 시작되어 끊겼어요. 이 부분은 이야기에 남지 않아요.",
    ),
    "reply.not_shown": (
        "⚠️ Discord is not answering, so the reply could not be shown; it is not part of the "
        "story. Try again in a moment.",
        "⚠️ 디스코드가 응답하지 않아 답장을 보여 주지 못했어요. 이 답장은 이야기에 남지 않아요. "
        "잠시 후 다시 해 주세요.",
    ),
    "reply.stop_stale": ("That reply has already ended.", "이미 끝난 답장이에요."),
    "engine.unavailable": (
        "the generation server is unavailable: gave up after {attempts} attempts",
        "생성 서버에 연결할 수 없어요: {attempts}번 시도 후 포기했어요",
    ),
    "engine.refused": (
        "the generation server refused the bot's credentials",
        "생성 서버가 봇의 인증 정보를 거부했어요",
    ),
    "engine.rejected": (
        "the generation server rejected the request",
        "생성 서버가 요청을 거절했어요",
    ),
    "engine.lost": (
        "the connection to the generation server was lost",
        "생성 서버와의 연결이 끊겼어요",
    ),
    "engine.ended_early": (
        "the generation server ended the reply early",
        "생성 서버가 답장을 일찍 끝냈어요",
    ),
    "engine.failed": (
        "the generation server failed mid-reply",
        "생성 서버가 답장 도중 오류를 냈어요",
    ),
    "engine.malformed": (
        "the generation server sent an answer the bot cannot read",
        "생성 서버가 알아볼 수 없는 답을 보냈어요",
    ),
    "engine.empty": (
        "the model wrote nothing",
        "모델이 아무 말도 쓰지 않았어요",
    ),
    "engine.model_failed": (
        "the model ran into an error",
        "모델에 오류가 생겼어요",
    ),
    "engine.recovering": (
        "the model is restarting after an error",
        "모델이 오류 뒤에 다시 시작하는 중이에요",
    ),
    "rp.started": (
        "**{name}** joins the channel. Just talk: every message here is part of the story.",
        "{name|가} 채널에 들어왔어요. 그냥 말을 걸면 이야기가 시작돼요.",
    ),
    "rp.stopped": (
        "The roleplay with **{name}** has ended. The history is kept.",
        "{name|와}의 롤플레이를 끝냈어요. 기록은 남아 있어요.",
    ),
    "rp.reset": (
        "Starting over with **{name}**. The old story is archived.",
        "{name|와} 처음부터 다시 시작해요. 이전 이야기는 보관됐어요.",
    ),
    "rp.undone": (
        "Removed the last exchange ({count} messages).",
        "마지막 대화 {count}개를 지웠어요.",
    ),
    "rp.memory_empty": (
        "No long-term memory yet. Set one with /rp memory text:…",
        "아직 장기 기억이 없어요. `/롤플레이 기억 내용:…`으로 정할 수 있어요.",
    ),
    "rp.memory_set": (
        "Saved. The character keeps this in mind from the next reply on.",
        "저장했어요. 다음 답장부터 캐릭터가 이 내용을 기억해요.",
    ),
    "rp.pin_form": ("📌 Remember this", "📌 기억하기"),
    "rp.pin_form_edit": ("📌 Edit pin #{id}", "📌 #{id}번 고정 기억 고치기"),
    "rp.pin_form_label": ("What the character keeps in mind", "캐릭터가 기억할 내용"),
    "rp.pinned": (
        "📌 Pinned as #{id} ({count}/{limit}): the character keeps it in mind from the next"
        " reply on.",
        "📌 #{id}번으로 고정했어요 ({count}/{limit}). 다음 답장부터 캐릭터가 기억해요.",
    ),
    "rp.pin_edited": ("📌 Pin #{id} changed.", "📌 #{id}번 고정 기억을 고쳤어요."),
    "rp.pin_removed": ("📌 Pin #{id} removed.", "📌 #{id}번 고정 기억을 뺐어요."),
    "rp.pins_heading": ("📌 Pinned ({count}/{limit})", "📌 고정 기억 ({count}/{limit})"),
    "rp.pins_none": (
        'No pins yet: "📌 Remember this" in a message\'s Apps menu pins a turn.',
        '고정 기억이 아직 없어요. 메시지의 앱 메뉴에서 "📌 기억하기"로 고정할 수 있어요.',
    ),
    "rp.memory_cleared": ("Long-term memory cleared.", "장기 기억을 지웠어요."),
    "rp.memory_tokens": ("{tokens}/{limit} tokens", "{tokens}/{limit} 토큰"),
    "rp.memory_covers": ("covers messages #{first}-#{until}", "메시지 #{first}~#{until} 요약"),
    "rp.memory_covers_none": ("covers nothing yet", "아직 요약한 메시지 없음"),
    "rp.memory_auto_on": ("automatic memory on", "자동 기억 켜짐"),
    "rp.memory_auto_off": ("automatic memory off", "자동 기억 꺼짐"),
    "rp.memory_stale": (
        "being rewritten (a message it covers changed)",
        "다시 쓰는 중 (요약한 메시지가 바뀜)",
    ),
    "rp.memory_updating": ("updating now", "지금 갱신 중"),
    "rp.dm_nsfw_on": (
        "NSFW characters may now play in your DMs with the bot (only there; servers keep "
        "their own rules). Turn it off again with /rp dm-nsfw enabled:False.",
        "이제 봇과의 DM에서 성인 캐릭터와 롤플레이할 수 있어요 (DM에서만, 서버는 서버 규칙을 "
        "따라요). `/롤플레이 dm-성인 켜기:False`로 다시 끌 수 있어요.",
    ),
    "rp.dm_nsfw_off": (
        "NSFW characters no longer play in your DMs with the bot.",
        "이제 봇과의 DM에서 성인 캐릭터는 나오지 않아요.",
    ),
    "rp.no_scenes": ("No scenes here yet.", "아직 이 채널에는 장면이 없어요."),
    "rp.scenes": ("Scenes here (newest first):", "이 채널의 장면 (최근 것부터):"),
    "rp.scene_running": (
        "**#{id}** {names} · {day} · {turns} turns · running",
        "**#{id}** {names} · {day} · {turns}턴 · 진행 중",
    ),
    "rp.scene_archived": (
        "#{id} {names} · {day} · {turns} turns",
        "#{id} {names} · {day} · {turns}턴",
    ),
    "rp.resumed": (
        "Scene #{id} with **{name}** goes on from where it stopped.",
        "장면 #{id} ({name}) 을 멈춘 곳부터 이어가요.",
    ),
    "rp.branched": (
        "A new branch, scene #{id} with **{name}**: the story goes on from here. The scene it "
        "came from is kept (/rp sessions).",
        "새 갈래, 장면 #{id} ({name}): 이야기가 여기서부터 이어져요. 원래 장면은 보관돼요 "
        "(`/롤플레이 장면목록`).",
    ),
    "rp.exported": (
        "This scene as a SillyTavern chat file (open it in SillyTavern, or /rp import it).",
        "이 장면을 SillyTavern 채팅 파일로 만들었어요 "
        "(SillyTavern에서 열거나 `/롤플레이 가져오기`로 가져올 수 있어요).",
    ),
    "rp.imported": (
        "Imported {count} messages: **{name}** goes on from the chat's last line.",
        "메시지 {count}개를 가져왔어요. {name|가} 채팅의 마지막 줄부터 이어가요.",
    ),
    "rp.imported_guests": (
        "Kept under their own names as guests (no character of yours here has it): {names}.",
        "여기서 쓸 수 있는 캐릭터 중에 같은 이름이 없어 손님으로 이름만 남긴 화자: {names}.",
    ),
    "rp.suggest_sent": ("Sent.", "보냈어요."),
    "rp.suggest_empty": ("There is nothing to send.", "보낼 내용이 없어요."),
    "rp.suggest_edit_title": ("Edit your line", "내 대사 고치기"),
    "rp.next": ("**{name}** speaks next…", "{name|가} 말할 차례예요…"),
    "rp.cast_added": (
        "**{name}** joins the scene. Call a character by name to talk to them.",
        "{name|가} 장면에 들어왔어요. 이름을 부르면 그 캐릭터가 답해요.",
    ),
    "rp.cast_removed": (
        "**{name}** leaves the scene. Their lines stay in the story.",
        "{name|가} 장면에서 나갔어요. 했던 말은 이야기에 남아요.",
    ),
    "rp.cast_list": ("In this scene ({count}/{limit}):", "이 장면의 캐릭터 ({count}/{limit}):"),
    "rp.turn_order": ("Turn order here: {order}", "이 채널의 차례: {order}"),
    "rp.muted": (
        "🔇 **{name}** no longer answers on its own here; /rp next still calls it.",
        "🔇 {name|는} 이제 스스로 답하지 않아요. `/롤플레이 다음`으로는 부를 수 있어요.",
    ),
    "rp.unmuted": (
        "🔊 **{name}** answers on its own again.",
        "🔊 {name|가} 다시 스스로 답해요.",
    ),
    "error.mute_alone": (
        "The only character of a scene always answers: there is nobody to mute it for.",
        "캐릭터가 한 명뿐인 장면에서는 음소거할 수 없어요.",
    ),
    "turn.order.addressed": (
        "addressed (the character named, else the last to answer you)",
        "부른 캐릭터 (안 부르면 마지막으로 답한 캐릭터)",
    ),
    "turn.order.natural": (
        "natural (named first, then by talkativeness)",
        "자연스럽게 (부른 캐릭터 먼저, 그다음 수다스러움 따라)",
    ),
    "turn.order.list": ("list (every character in cast order)", "출연 순서대로 모두"),
    "turn.order.pooled": (
        "pooled (one character a line, drawn among those yet to speak)",
        "돌아가며 한 명씩 (아직 말하지 않은 캐릭터 중에서 뽑기)",
    ),
    "turn.order.manual": (
        "manual (only /rp next or a name button)",
        "직접 고르기 (`/롤플레이 다음`이나 이름 버튼으로만)",
    ),
    "turn.why.named": ("named", "이름이 불림"),
    "turn.why.talkative": (
        "talkativeness {share} ≥ draw {draw}",
        "수다스러움 {share} ≥ 뽑은 수 {draw}",
    ),
    "turn.why.drawn": ("drawn: nobody spoke up", "아무도 나서지 않아 뽑힘"),
    "turn.why.listed": ("cast order", "출연 순서"),
    "turn.why.last": ("answered you last", "마지막으로 답한 캐릭터"),
    "turn.why.pooled": (
        "drawn among those yet to speak since the last player line",
        "마지막 플레이어 대사 뒤로 아직 말하지 않은 캐릭터 중에서 뽑힘",
    ),
    "turn.why.pooled_again": (
        "drawn: everyone had spoken, so anyone but the last speaker",
        "모두 말해서 방금 말한 캐릭터만 빼고 뽑힘",
    ),
    "error.all_muted": (
        "Every character of this scene is muted: name one to make it speak.",
        "이 장면의 캐릭터가 모두 음소거되어 있어요. 말할 캐릭터를 골라 주세요.",
    ),
    "rp.auto": (
        "The characters take {turns} turn(s) among themselves; a message or ⏹ stops them.",
        "캐릭터끼리 {turns}차례 주고받아요. 메시지를 보내거나 ⏹를 누르면 멈춰요.",
    ),
    "rp.auto_limited": (
        "The characters stopped: you have no turn left for now (try again in {retry_after} s).",
        "캐릭터끼리 주고받기를 멈췄어요. "
        "지금은 남은 차례가 없어요 ({retry_after}초 뒤에 다시 해 주세요).",
    ),
    "error.auto_in_dm": (
        "Characters take turns among themselves only in a server's channels.",
        "캐릭터끼리 주고받기는 서버 채널에서만 할 수 있어요.",
    ),
    "rp.context_spoke_up": (
        "{name} spoke up on its own after {minutes} quiet minutes",
        "{name|가} {minutes}분 동안 조용해서 먼저 말했어요",
    ),
    "rp.context_auto_turn": (
        "{name} spoke on its own: turn {turn} of {of} among the characters",
        "{name|가} 스스로 말했어요: 캐릭터끼리 주고받는 {of}차례 중 {turn}번째",
    ),
    "rp.context_picks": (
        "Who answered the last line, and why: {picks}",
        "마지막 대사에 답한 캐릭터와 까닭: {picks}",
    ),
    "rp.continuing": ("Continuing…", "이어서 쓰는 중…"),
    "rp.edit_offer": (
        "Your message changed. Regenerate the reply with 🔄?",
        "메시지가 수정됐어요. 🔄 를 누르면 답장을 다시 생성해요.",
    ),
    "rp.missed_late": (
        "While I was disconnected from Discord, {count} message(s) here went unanswered for "
        "more than {minutes} minutes. I left them unanswered and out of the story: send again "
        "what you still want answered.",
        "디스코드 연결이 끊긴 사이에 온 메시지 {count}개는 {minutes}분이 넘게 지나서 답하지 "
        "않고 이야기에도 넣지 않았어요. 아직 답을 원하는 말은 다시 보내 주세요.",
    ),
    "rp.context_sent": (
        "**What the model was shown** for the last reply ({speaker}, {kind}, {when}): "
        "{tokens} tokens. The whole prompt is attached.",
        "**모델이 본 프롬프트**: 마지막 답 ({speaker}, {kind}, {when}), {tokens} 토큰. "
        "프롬프트 전체를 파일로 붙였어요.",
    ),
    "rp.context_nothing_sent": (
        "Nothing was sent to the model in this scene since the bot started. **Preview, not "
        "sent**: the prompt for {speaker}'s next reply, {tokens} tokens (attached).",
        "봇이 시작된 뒤로 이 장면에서 모델에 보낸 프롬프트가 없어요. **미리보기 (보내지 않음)**: "
        "{speaker}의 다음 답 프롬프트, {tokens} 토큰 (파일로 붙였어요).",
    ),
    "rp.context_preview_size": (
        "Preview, not sent: {speaker}'s next reply would now get {tokens} tokens.",
        "미리보기 (보내지 않음): {speaker}의 다음 답이라면 지금 {tokens} 토큰이에요.",
    ),
    "rp.context_kind_reply": ("reply", "답"),
    "rp.context_kind_regenerate": ("regenerated", "다시 생성"),
    "rp.context_kind_continue": ("continued", "이어 쓰기"),
    "rp.context_kind_suggest": ("suggestion", "제안"),
    "rp.context_no_file": (
        "The whole prompt is not attached: it holds a private character's card.",
        "비공개 캐릭터 카드가 들어 있어서 프롬프트 전체는 붙이지 않았어요.",
    ),
    "rp.context_facts_hidden": (
        "What the character knows about the player ({n} fact(s)) is theirs alone to read.",
        "캐릭터가 그 플레이어에 대해 아는 사실({n}개)은 그 플레이어만 볼 수 있어요.",
    ),
    "rp.context_names_hidden": (
        "Entries of the card's lorebook are counted, not named: the card is its owner's.",
        "비공개 카드라서 로어북 항목은 이름 없이 개수만 보여요. 이름은 카드 주인만 볼 수 있어요.",
    ),
    "persona.set": ("You now play as **{name}**.", "이제 {name|로} 롤플레이해요."),
    "persona.cleared": ("Persona cleared.", "페르소나를 지웠어요."),
    "error.cast_name_is_persona": (
        "A player in this scene plays as **{name}**: a character of that name would be taken "
        "for them. It can join once they choose another persona (`/persona set`).",
        "이 장면의 플레이어가 {name|이라는} 페르소나로 플레이하고 있어서, 같은 이름의 "
        "캐릭터는 그 플레이어와 헷갈려요. 그 플레이어가 페르소나를 바꾸면 (`/페르소나 정하기`) "
        "들어올 수 있어요.",
    ),
    "persona.taken_character": (
        "**{name}** is a character in this scene: choose a persona name of your own.",
        "{name|은} 이 장면의 캐릭터 이름이에요. 나만의 페르소나 이름을 정해 주세요.",
    ),
    "persona.taken_member": (
        "That name looks like another member's (or the bot's): choose one of your own.",
        "다른 멤버(또는 봇)의 이름과 비슷해서 쓸 수 없어요. 나만의 이름을 정해 주세요.",
    ),
    "facts.none": (
        "No character knows anything about you here yet.",
        "여기서 나에 대해 아는 캐릭터가 아직 없어요.",
    ),
    "facts.heading": (
        "What characters know about you here (only you see this):",
        "여기서 캐릭터들이 나에 대해 아는 것 (나만 볼 수 있어요):",
    ),
    "facts.more": ("…and {n} more.", "…그리고 {n}개 더 있어요."),
    "facts.source.summary": ("from the story", "이야기에서"),
    "facts.source.pin": ("pinned", "고정"),
    "facts.source.player": ("written by you", "직접 씀"),
    "facts.edited": ("Fact #{id} is now: {text}", "{id}번 기억을 고쳤어요: {text}"),
    "facts.deleted": ("Fact #{id} is forgotten.", "{id}번 기억을 지웠어요."),
    "facts.not_found": (
        "You have no fact #{id} here (see `/persona memory list`).",
        "여기에는 내 {id}번 기억이 없어요 (`/페르소나 기억 목록` 참고).",
    ),
    "facts.cleared": (
        "The character forgot {n} fact(s) about you here.",
        "캐릭터가 여기서 나에 대해 아는 것 {n}개를 잊었어요.",
    ),
    "facts.empty": ("A fact needs text.", "기억 내용이 비어 있어요."),
    "persona.none": (
        "No persona: your display name is used.",
        "페르소나가 없어요. 표시 이름을 써요.",
    ),
    "character.created": ("Created **{name}** (#{id}).", "**{name}**(#{id}) 캐릭터를 만들었어요."),
    "character.updated": ("Updated **{name}** (#{id}).", "**{name}**(#{id}) 캐릭터를 수정했어요."),
    "character.nsfw.on": (
        "**{name}** is marked adults only (NSFW): it plays only where the server allows NSFW "
        "characters (and in DMs of those who turned them on).",
        "{name|은} 이제 성인(NSFW) 캐릭터예요. 서버가 허용한 곳(과 성인 캐릭터를 켠 사람의 "
        "DM)에서만 롤플레이할 수 있어요.",
    ),
    "character.nsfw.off": (
        "**{name}** is no longer marked adults only (NSFW).",
        "{name|은} 이제 성인(NSFW) 캐릭터가 아니에요.",
    ),
    "character.rating.nsfw": ("🔞 NSFW", "🔞 성인(NSFW)"),
    "character.rating.sfw": ("not NSFW", "전체 이용가"),
    "character.imported": (
        "Imported **{name}** (#{id}).",
        "**{name}**(#{id}) 캐릭터를 가져왔어요.",
    ),
    "character.module_imported": (
        "Added the module to **{name}** (#{id}): {scripts} scripts and {entries} lorebook "
        "entries (those it already had were left as they were).",
        "**{name}**(#{id})에 모듈을 더했어요: 스크립트 {scripts}개, 로어북 항목 {entries}개 "
        "(이미 있던 것은 그대로 두었어요).",
    ),
    "character.scripts": (
        "{count} card scripts",
        "카드 스크립트 {count}개",
    ),
    "character.deleted": ("Deleted **{name}**.", "**{name}** 캐릭터를 지웠어요."),
    "character.pending": (
        "A moderator must approve it before others can use it.",
        "관리자가 승인해야 다른 사람도 쓸 수 있어요.",
    ),
    "character.approved": ("Approved **{name}**.", "**{name}** 캐릭터를 승인했어요."),
    "character.rejected": ("Rejected **{name}**.", "**{name}** 캐릭터를 거절했어요."),
    "character.avatar_dropped": (
        "The card's image couldn't be used as the avatar, so it was imported without one.",
        "카드의 이미지를 아바타로 쓸 수 없어서 아바타 없이 가져왔어요.",
    ),
    "character.avatar_set": ("New avatar for **{name}**.", "**{name}**의 아바타를 바꿨어요."),
    "character.awaiting_review": ("**Awaiting review:**", "**승인 대기 중:**"),
    "character.edit_long": (
        "Some fields of **{name}** are longer than one Discord form box: {fields}. "
        "Each opens in its own form, split into parts; the other fields are in the first button.",
        "**{name}**의 일부 항목이 디스코드 입력 칸 하나보다 길어요: {fields}. "
        "긴 항목은 여러 칸으로 나눠 따로 열리고, 나머지 항목은 첫 번째 버튼에 있어요.",
    ),
    "character.part_saved": (
        "Saved {field} ({page}/{pages}) of **{name}**. The next part opens with the button.",
        "**{name}**의 {field}({page}/{pages})를 저장했어요. 다음 부분은 버튼으로 열어요.",
    ),
    "character.sheet_shortened": (
        "Long fields are shortened here (…): /character export gives the whole card.",
        "긴 항목은 여기서 줄여 보여요(…). 전체는 `/캐릭터 내보내기`로 받아 보세요.",
    ),
    "error.character_changed": (
        "**{name}** changed while the form was open, so nothing was saved. "
        "Open the form again to edit the latest text.",
        "폼을 여는 동안 **{name}** 캐릭터가 바뀌어서 저장하지 않았어요. "
        "최신 내용으로 다시 열어 수정해 주세요.",
    ),
    "character.none": (
        "No characters yet. Create one with /character create or /character import.",
        "아직 캐릭터가 없어요. `/캐릭터 만들기`나 `/캐릭터 가져오기`로 만들어 보세요.",
    ),
    "character.speech.formal": (
        "**{name}** now speaks formally (존댓말).",
        "{name|는} 이제 존댓말을 써요.",
    ),
    "character.speech.informal": (
        "**{name}** now speaks casually (반말).",
        "{name|는} 이제 반말을 써요.",
    ),
    "config.saved.channel": (
        "Saved for this channel: {changes}",
        "이 채널에 저장했어요: {changes}",
    ),
    "config.saved.server": (
        "Saved as server default: {changes}",
        "서버 기본값으로 저장했어요: {changes}",
    ),
    "config.unknown_setting": (
        "There is no setting of that name. These can be reset: {names}",
        "그런 이름의 설정은 없어요. 되돌릴 수 있는 설정: {names}",
    ),
    "config.reset.channel": (
        "`{setting}` in this channel follows the server's setting again.",
        "이 채널의 {setting|은} 다시 서버 설정을 따라요.",
    ),
    "config.reset.server": (
        "`{setting}` on this server is back to the default.",
        "이 서버의 {setting|을} 기본값으로 되돌렸어요.",
    ),
    "preset.applied.channel": (
        "This channel now samples with the preset **{name}**: {values}.",
        "이 채널은 이제 프리셋 {name|으로} 샘플링해요: {values}",
    ),
    "preset.applied.server": (
        "The server's default sampling is now the preset **{name}**: {values}.",
        "서버 기본 샘플링을 프리셋 {name|으로} 바꿨어요: {values}",
    ),
    "preset.saved": (
        "Saved this channel's sampling as the preset **{name}**: {values}.",
        "이 채널의 샘플링을 프리셋 {name|으로} 저장했어요: {values}",
    ),
    "preset.list": ("**Sampling presets**", "**샘플링 프리셋**"),
    "preset.lane_note": (
        "⏱: min-p, DRY or XTC; the built-in engine writes such replies one at a time.",
        "⏱: min-p, DRY, XTC를 써요. 내장 엔진은 이런 답장을 한 번에 하나씩 써요.",
    ),
    "preset.deleted": ("Deleted the preset **{name}**.", "프리셋 {name|을} 지웠어요."),
    "error.no_preset": (
        "There is no preset called **{name}** (see `/config preset list`).",
        "{name|이라는} 프리셋이 없어요 (`/설정 프리셋 목록` 참고).",
    ),
    "error.preset_shipped": (
        "**{name}** is one of the presets every server has; choose another name.",
        "{name|은} 모든 서버에 있는 기본 프리셋이에요. 다른 이름을 골라 주세요.",
    ),
    "error.preset_limit": (
        "This server already has {limit} presets of its own; delete one first.",
        "이 서버에는 이미 프리셋이 {limit}개 있어요. 먼저 하나를 지워 주세요.",
    ),
    "engine.cannot_continue": (
        "⚠️ The generation server cannot write on from where a reply starts: in group scenes a "
        "character may answer without its name first, and continuing a reply writes a new one. "
        "The bot's host can switch it to `ENGINE_API=completions`.",
        "⚠️ 생성 서버가 답장을 정해진 시작에서 이어 쓰지 못해요. 그룹 장면에서는 캐릭터가 "
        "이름 없이 답할 수 있고, 이어 쓰기는 새 답장이 돼요. "
        "봇 운영자는 `ENGINE_API=completions`로 바꿀 수 있어요.",
    ),
    "engine.settings_refused": (
        "⚠️ The generation server does not accept `{names}`: replies here go on without it. "
        "Moderators can remove it with `/config reset` or use another preset.",
        "⚠️ 생성 서버가 `{names}` 설정을 받지 않아서 이 설정 없이 답하고 있어요. "
        "관리자는 `/설정 초기화`로 지우거나 다른 프리셋을 쓸 수 있어요.",
    ),
    "config.show": ("**Settings in this channel**", "**이 채널의 설정**"),
}


def is_korean(locale: discord.Locale | str | None) -> bool:
    return str(locale or "").startswith("ko")


def t(locale: discord.Locale | str | None, key: str, **params: Any) -> str:
    """The reply `key` in the user's language (Korean for ko, English otherwise)."""
    english, korean = MESSAGES.get(key, MESSAGES["error.generic"])
    template = korean if is_korean(locale) else english
    # {name|가}: the name with the particle form that fits its last syllable (민지가, 준이).
    template = fit_particle_slots(template, params)
    try:
        return template.format(**params)
    except (KeyError, IndexError):
        return template


_Where = app_commands.TranslationContextLocation
_DESCRIPTIONS = (
    _Where.command_description,
    _Where.group_description,
    _Where.parameter_description,
)


class KoreanTranslator(app_commands.Translator):
    """Korean names and descriptions of the command tree (catalogue: `commands_ko`).

    discord.py asks once per text and says where it goes: a command's or group's name is looked
    up by the command's full English name (the same word may name different commands), an
    option's or a choice's name and any description by its English text.
    """

    def __init__(
        self,
        *,
        commands: Mapping[str, str],
        options: Mapping[str, str],
        choices: Mapping[str, str],
        descriptions: Mapping[str, str],
    ) -> None:
        self._commands = commands
        self._options = options
        self._choices = choices
        self._descriptions = descriptions

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if locale is not discord.Locale.korean:
            return None
        where = context.location
        if where in (_Where.command_name, _Where.group_name):
            return self._commands.get(getattr(context.data, "qualified_name", string.message))
        if where is _Where.parameter_name:
            return self._options.get(string.message)
        if where is _Where.choice_name:
            return self._choices.get(string.message)
        if where in _DESCRIPTIONS:
            return self._descriptions.get(string.message)
        return None
