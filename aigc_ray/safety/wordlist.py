"""The project's own word and phrase list, per category. Words match whole normalised tokens
(with common endings: "fucking", "bitches"), so a word inside another ("Scunthorpe", "assassin",
"cocktail", "grape") never matches; a few words that no innocent word contains also match inside
compounds ("motherfucker", "bullshit"). Phrases match on the normalised token stream.

Changing a list changes ``VERSION``, which every audit record carries."""

from __future__ import annotations

import hashlib
import re

WORDS: dict[str, tuple[str, ...]] = {
    "profanity": tuple(
        """fuck fuk fck fvck phuck fuq motherfucker shit sht bullshit bitch biatch btch bitchy bastard asshole
        arsehole ass arse azz dickhead cocksucker cunt piss pissed bollocks wanker twat slut whore stfu wtf
        dumbass jackass douche douchebag crap crappy damn goddamn""".split()
    ),
    "harassment": tuple("idiot moron imbecile retard retarded scumbag dumbass loser kys stfu".split()),
    "violence": tuple("rape rapist massacre behead".split()),
    "self-harm": tuple("suicidal kms selfharm".split()),
    "sexual": tuple("porn porno pornography blowjob handjob nudes dildo horny hentai milf boobs".split()),
}
# Not "y" ("cocky"), not "in" ("cumin"); ambiguous words ("cock", "prick", "dick", "bloody", "cum" as in
# "cum laude") are left out: the classifier weighs them in context.
ENDINGS = ("s", "es", "ed", "er", "ers", "ing", "ies", "head", "heads", "face", "hole")
INSIDE = ("fuck", "shit")  # also inside a compound: no innocent English word holds these letters

_YOU = r"(?:you|u|ya|yall|you all)"
_ARE = r"(?: are| r|'re|re| is)"  # "you're" is one token, "you are" two
_WILL = r"(?:i will|i'?ll|i am going to|i'?m going to|gonna|i'?m gonna|going to|will|we will|we'?ll)"
_HURT = r"(?:kill|murder|shoot|stab|hurt|beat|strangle|choke|slaughter|burn|destroy|rape|smash)"
PHRASES: dict[str, tuple[str, ...]] = {
    "harassment": (
        rf"{_YOU}{_ARE} (?:a |an |such a |so )?(?:stupid|dumb|idiot|moron|loser|pathetic|worthless|"
        r"ugly|disgusting|trash|garbage|scum|waste|failure|joke|clown|freak)",
        r"shut (?:the \w+ )?up",
        r"go to hell",
        r"(?:nobody|no one|no1) (?:likes|loves|wants|cares about) (?:you|u)",
        rf"i hate {_YOU}",
        rf"kill {_YOU}rself|kill yourselves|go die",
        r"piece of (?:shit|garbage|trash|crap)",
        r"(?:drop|fall) dead",
    ),
    "violence": (
        rf"{_WILL} {_HURT} {_YOU}",
        rf"{_WILL} {_HURT} (?:him|her|them|everyone|everybody|all of you|your \w+)",
        rf"{_HURT} {_YOU} (?:all|tonight|tomorrow|later)",
        r"(?:blow|shoot) up (?:the|a|this|your) \w+",
        r"(?:hope|wish) (?:you|u) (?:die|get hurt|get killed|burn)",
        rf"{_YOU}(?: will|'ll|{_ARE} going to|{_ARE} gonna) (?:die|bleed|pay for this)",
        r"slit (?:your|his|her|their) throats?",
        r"burn (?:your|his|her|their) (?:house|home|car)",
        r"(?:i will|i'?ll) find (?:you|where you live)",
        rf"find {_YOU} and {_HURT}",
        r"(?:bring|brought) a (?:gun|knife|bomb) to (?:school|work|class)",
    ),
    "self-harm": (
        r"(?:kill|hurt|cut|harm|hang|shoot) (?:myself|my self)",
        r"(?:thinking about|think about|considering|contemplating|planning) (?:suicide|killing myself|ending it)",
        r"commit(?:ting)? suicide",
        r"(?:end|take) my (?:own )?life",
        r"(?:want|wanna|going) to die",
        r"(?:don'?t|do not) want to (?:live|be alive) anymore",
        r"(?:kill|hurt|cut|harm) (?:yourself|urself|your self)",
        r"how (?:to|do i) (?:kill|hurt|cut) (?:myself|yourself)",
    ),
    "sexual": (
        r"(?:send|show) (?:me )?(?:your )?(?:nudes|naked pics|naked photos|nude pics)",
        r"have sex with (?:me|you)",
        r"(?:suck|lick) my \w+",
    ),
}

# Everyday phrases whose words the classifier reads out of context ("Moby Dick", "a pin prick"):
# removed from what the classifier sees (the word list above still reads the whole text).
BENIGN = (
    r"moby dick",
    r"pin ?pricks?",
    r"bloody (?:nose|mary|hell|good|brilliant)",
    r"pussy ?willows?",
    r"(?:summa |magna )?cum laude",
    r"(?:blue|great|coal) tits?",
    r"die (?:laughing|of laughter|of embarrassment)",
    r"kill (?:this|the|that|a) (?:feature|process|job|task|bug|server|session|program|branch|idea)",
    r"cock(?:ed|s)? (?:his|her|their|its|the) (?:head|gun|pistol|rifle|hammer|hat)",
)

VERSION = hashlib.sha256(repr((WORDS, ENDINGS, INSIDE, PHRASES, BENIGN)).encode()).hexdigest()[:12]

WORD_CATEGORIES: dict[str, set[str]] = {}
for _category, _words in WORDS.items():
    for _word in _words:
        WORD_CATEGORIES.setdefault(_word, set()).add(_category)
PHRASE_PATTERNS: dict[str, re.Pattern] = {
    category: re.compile(r"\b(?:" + "|".join(patterns) + r")\b") for category, patterns in PHRASES.items()
}
BENIGN_PATTERN = re.compile(r"\b(?:" + "|".join(BENIGN) + r")\b", re.IGNORECASE)
