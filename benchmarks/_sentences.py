"""A few hundred real English sentences on varied topics, for capturing a real model's activations offline."""

from __future__ import annotations

__all__ = ["SENTENCES"]

_TEXT = """
The river flooded the lower fields after three days of heavy rain. Farmers moved their cattle to the hills before dawn.
By noon the water had reached the old stone bridge. Nobody in the village could remember a flood this high.
The mayor asked volunteers to fill sandbags outside the school. Children carried water bottles to the workers.
In the evening the rain finally stopped and the clouds broke apart. A thin line of orange light appeared over the valley.
The next morning the river was still brown and fast. Insurance agents arrived a week later with clipboards and cameras.
Photosynthesis converts light energy into chemical energy stored in sugars. Chlorophyll absorbs mostly red and blue light.
The light reactions take place in the thylakoid membranes of the chloroplast. Water molecules are split and oxygen is released.
The Calvin cycle fixes carbon dioxide into three-carbon molecules. Plants in hot climates often use a different pathway to save water.
Cacti open their pores at night and store carbon dioxide as an acid. This adaptation reduces water loss during the day.
A compiler translates source code into machine instructions. Modern compilers perform many optimisation passes.
Inlining replaces a function call with the body of the function. Loop unrolling trades code size for fewer branches.
Register allocation decides which values live in fast processor registers. A poor allocation forces values to spill to memory.
Just-in-time compilers gather profiles while the program runs. They can specialise code for the types they actually observe.
Garbage collectors reclaim memory that the program can no longer reach. Generational collectors assume most objects die young.
She opened the letter slowly, afraid of what it might say. Her hands were shaking as she unfolded the thin paper.
The handwriting belonged to her grandmother, who had died ten years earlier. The letter had been lost in the post since 1998.
It described a garden, a wooden swing and a recipe for plum cake. At the bottom was a short apology that she never expected.
She read it twice and then sat quietly by the window. Outside, a neighbour was mowing the lawn as if nothing had happened.
The stock market fell sharply on Monday after weak manufacturing data. Technology shares led the decline in early trading.
Bond yields dropped as investors looked for safer assets. The central bank said it would watch the situation closely.
Analysts expect interest rates to stay unchanged until the autumn. Some economists warn that a recession is now more likely.
Oil prices rose slightly because of supply concerns in the Middle East. The dollar weakened against the euro and the yen.
Retail sales were stronger than forecast, which surprised many traders. By Friday the index had recovered half of its losses.
To bake bread you need flour, water, salt and yeast. Mix the ingredients and knead the dough for about ten minutes.
Let the dough rise in a warm place until it doubles in size. Then shape it into a loaf and let it rest again.
Bake the bread in a hot oven until the crust is deep brown. Tap the bottom of the loaf; it should sound hollow.
Let it cool on a rack before slicing, or the inside will be gummy. Sourdough uses a wild culture instead of packaged yeast.
The telescope was pointed at a faint galaxy near the constellation of Leo. Its light had travelled for two hundred million years.
Astronomers measured the redshift to estimate how fast it was receding. The spectrum showed strong lines of hydrogen and oxygen.
A supernova had exploded in one of its spiral arms last spring. Such events help calibrate distances across the universe.
Dark matter does not emit light but its gravity shapes galaxies. Rotation curves stay flat far beyond the visible stars.
The football match ended in a draw after a dramatic final minute. The home team scored an equaliser from a corner kick.
The goalkeeper had saved a penalty earlier in the second half. Fans sang loudly as the players walked off the pitch.
The coach praised the defence but criticised the slow passing. The next game is away against the league leaders.
Two players are doubtful because of minor muscle injuries. Tickets for the cup final sold out within an hour.
Please remember to bring your passport and a printed copy of your ticket. Check-in closes forty minutes before departure.
Liquids must be in containers of one hundred millilitres or less. Laptops should be removed from bags at the security check.
The flight to Lisbon has been delayed because of fog. Passengers will receive a meal voucher at the information desk.
Our hotel is a short walk from the old cathedral and the market. Breakfast is served on the terrace from seven until ten.
The human heart beats about one hundred thousand times a day. It pumps blood through a network of vessels many kilometres long.
Red blood cells carry oxygen bound to haemoglobin. White blood cells defend the body against infection.
Regular exercise strengthens the heart muscle and lowers blood pressure. Smoking damages the lining of the arteries.
A healthy diet includes vegetables, whole grains and modest amounts of salt. Sleep is just as important for recovery.
The museum reopened after a long renovation of its east wing. Visitors can now see paintings that were stored for decades.
A small portrait by a Dutch master draws the largest crowds. The curators restored its varnish with great care.
Audio guides are available in twelve languages at the entrance. Entry is free for students on the first Sunday of the month.
Machine learning models learn patterns from examples rather than rules. A neural network is built from layers of simple units.
Training adjusts millions of weights to reduce a loss function. Gradient descent takes small steps in the direction of lower loss.
Overfitting happens when a model memorises the training data. Regularisation and more data usually help it generalise.
Transformers use attention to relate every token to every other token. Large language models are trained on vast amounts of text.
Sparse autoencoders try to find interpretable features inside a model. They reconstruct activations from a few active latents.
The old lighthouse stands on a rock at the edge of the bay. Its lamp was automated in the nineteen eighties.
Before that, a keeper and his family lived in the cottage below. They rowed to the harbour once a week for supplies.
In winter storms the waves could reach the lantern room. Today the cottage is a small museum run by volunteers.
The committee will meet on Thursday to review the budget proposal. Each department must submit its spending plan by Tuesday.
Travel costs have increased by twelve percent since last year. The chair suggested replacing some trips with video calls.
A final decision is expected before the end of the quarter. Minutes of the meeting will be shared with all staff.
Volcanoes form where magma rises through cracks in the crust. Some erupt explosively while others release slow rivers of lava.
Ash clouds can disrupt air travel across entire continents. Scientists monitor gas emissions and small earthquakes for warnings.
Fertile volcanic soil attracts farmers despite the obvious risks. Iceland uses geothermal heat to warm most of its homes.
He learned to play the violin at the age of seven. His teacher was strict but patient and very kind.
By sixteen he was performing with the city youth orchestra. He still practises scales for an hour every morning.
Last year he recorded an album of folk songs from his region. The critics described his tone as warm and unhurried.
The new library has quiet rooms, a cafe and a maker space. Members can borrow laptops, cameras and even sewing machines.
Late fees were abolished to encourage people to return. Story time for toddlers takes place every Wednesday morning.
Bees communicate the location of flowers through a waggle dance. The angle of the dance shows the direction relative to the sun.
The duration of the waggle tells other bees how far to fly. A healthy hive can contain fifty thousand workers in summer.
Pesticides and habitat loss have reduced bee populations in many places. Planting wildflowers along roads can help them recover.
The train leaves platform four at eight fifteen. It stops at every station until the border.
A conductor checks tickets shortly after the first stop. The dining car serves coffee, sandwiches and hot soup.
Bicycles must be stored in the carriage marked with a green sign. The journey to the coast takes just under three hours.
Rome was not built in a day, as the old saying goes. The city grew over centuries from a cluster of hilltop villages.
Its engineers built aqueducts that carried water over long distances. Roman concrete has survived in harbours for two thousand years.
The empire split into western and eastern halves in the fourth century. Constantinople remained a capital for another thousand years.
Climate change is warming the oceans and melting polar ice. Sea levels are rising faster than they did a century ago.
Coral reefs bleach when the water stays too warm for too long. Some coastal cities are building walls and pumping stations.
Renewable energy is now cheaper than coal in many countries. Storage remains the main challenge for solar and wind power.
I forgot my umbrella again and got soaked on the way home. The bus was late and completely full when it arrived.
My phone battery died just as I tried to call a taxi. In the end I walked the last two kilometres in the rain.
At home I made tea and put my wet shoes near the heater. Tomorrow I will check the weather forecast before leaving.
The detective studied the muddy footprints near the back door. They were too small to belong to the gardener.
A broken cup lay under the kitchen table beside a silver key. The housekeeper claimed she had heard nothing that night.
Her story changed slightly each time she told it. By midnight the detective knew who had opened the safe.
Mathematics describes patterns with precise symbols and rules. A prime number has exactly two distinct divisors.
There are infinitely many primes, as Euclid proved long ago. The distribution of primes still hides deep unsolved questions.
Calculus studies change through derivatives and integrals. Probability theory helps us reason about uncertain events.
The village bakery opens at six and sells out by nine. People queue in the cold for its famous cinnamon rolls.
The baker learned the recipe from her father forty years ago. She refuses to reveal the secret ingredient to anyone.
On Sundays she closes early and walks her dog along the canal. Her grandson plans to take over the shop next spring.
Good software documentation explains both what to do and why. Examples are often more helpful than long descriptions.
Error messages should name the problem and suggest a fix. Tests protect a project from breaking when code changes.
Code review spreads knowledge across a team and catches mistakes. Small, focused changes are easier to review than large ones.
The mountain path was steep, narrow and covered in loose stones. We reached the hut just before the storm arrived.
Thunder echoed across the valley for nearly an hour. The warden served lentil soup and black bread to everyone.
At sunrise the peaks were white with fresh snow. We decided to turn back rather than risk the icy ridge.
Elections will be held in the spring after parliament was dissolved. Three parties are polling within a few points of each other.
Housing costs and public transport dominate the campaign debates. Turnout among young voters was low at the last election.
Observers from neighbouring countries will monitor the count. The results are expected early on the following morning.
Octopuses are clever animals that can solve simple puzzles. They change colour in a fraction of a second to hide.
Each arm contains many neurons and can act on its own. Most octopuses live only a year or two.
Some species carry coconut shells to use as shelters. Researchers have seen them escape from closed aquarium tanks.
The printer on the second floor is out of toner again. Please use the one near the kitchen until it is repaired.
The technician will come on Monday between nine and twelve. Remember to log out of shared computers at the end of the day.
New employees should complete the safety training in their first week. Parking permits can be requested from reception.
Language changes as speakers invent and borrow new words. English took many words from French after the Norman conquest.
Spelling often preserves older pronunciations that have since changed. Children acquire grammar without formal lessons.
Sign languages have full grammars of their own. Many of the world's languages are spoken by fewer than ten thousand people.
The chess tournament lasted nine rounds over five days. A sixteen-year-old player won the title on tiebreaks.
She sacrificed a knight in the final game to open the king's position. Her opponent resigned after a long think.
The prize money will pay for coaching and travel next season. Chess clubs report rising membership since the online boom.
"""

SENTENCES: list[str] = [
    s.strip() + "." for line in _TEXT.strip().splitlines() for s in line.split(". ") if s.strip()
]
SENTENCES = [s[:-1] if s.endswith("..") else s for s in SENTENCES]
