const express = require('express');
const crypto = require('crypto');
const app = express();
app.use(express.json());
app.post('/webhooks/axie', (req, res) => {
// Verify webhook signature
const secret = process.env.WEBHOOK_SECRET;
const signature = req.headers['x-webhook-signature'];
if (!verifyWebhook(req, secret)) {
return res.status(401).send('Invalid signature');
}
// Process webhook
const { event, data } = req.body;
switch (event) {
case 'user.created':
// Add user to your CRM
addUserToCRM(data);
break;
case 'user.updated':
// Update user in your CRM
updateUserInCRM(data);
break;
// ... handle other events
}
// Always respond 200
res.status(200).json({ received: true });
});
function verifyWebhook(req, secret) {
const signature = req.headers['x-webhook-signature'];
const body = JSON.stringify(req.body);
const expected = crypto
.createHmac('sha256', secret)
.update(body)
.digest('hex');
return signature === `sha256=${expected}`;
}
app.listen(3000);
